//! The frame every page shares: head (our stylesheet and script only), a skip link, the navigation with the
//! current page marked, the node's name and whether it leads, and a status region the script writes messages to.

use maud::{DOCTYPE, Markup, html};

use super::assets;
use kairos_server::node::Node;

/// Which navigation entry a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Dashboard,
    Jobs,
    New,
    Busy,
    Nodes,
    Audit,
    None,
}

const ENTRIES: [(Nav, &str, &str); 6] = [
    (Nav::Dashboard, "/ui/", "Dashboard"),
    (Nav::Jobs, "/ui/jobs", "Jobs"),
    (Nav::Busy, "/ui/busy", "Busy"),
    (Nav::Nodes, "/ui/nodes", "Nodes"),
    (Nav::Audit, "/ui/audit", "Audit"),
    (Nav::New, "/ui/new", "New job"),
];

/// A whole page. `node` is `None` only for error pages rendered without one.
pub fn page(node: Option<&Node>, title: &str, nav: Nav, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · Kairos" }
                link rel="icon" type="image/svg+xml" href=(assets::url("icon.svg"));
                link rel="stylesheet" href=(assets::url("kairos.css"));
                script src=(assets::url("kairos.js")) defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/" { img src=(assets::url("icon.svg")) alt="" width="22" height="22"; "Kairos" }
                    nav aria-label="Main" {
                        ul {
                            @for (entry, href, label) in ENTRIES {
                                li { a href=(href) aria-current=[(entry == nav).then_some("page")] { (label) } }
                            }
                        }
                    }
                    @if let Some(node) = node {
                        p.node-badge title="The node serving this page" {
                            (node.config.node_name)
                            @if node.is_leader() { " " span.badge.leader { "leader" } }
                            @else { " " span.badge.muted { "follower" } }
                        }
                        @if node.config.acl_enabled {
                            form.signout method="post" action="/ui/signout" { button type="submit" { "Sign out" } }
                        }
                    }
                }
                @if let Some(node) = node.filter(|n| !n.config.acl_enabled && !n.config.http_addr.ip().is_loopback()) {
                    p.notice.error.acl-off role="alert" {
                        "Access control is disabled and this API listens on " (node.config.http_addr)
                        ", beyond this host: anyone who can reach it may create and run jobs (any command) on every \
                         node. Start the servers with --acl-enabled and run kairos acl bootstrap."
                    }
                }
                div #flash role="status" aria-live="polite" {}
                main #main tabindex="-1" { (body) }
                footer.bottom {
                    "Kairos " (env!("CARGO_PKG_VERSION")) " · "
                    a href="/v1/openapi.json" { "API (OpenAPI)" }
                }
            }
        }
    }
}

/// A page of a running node.
pub fn node_page(node: &Node, title: &str, nav: Nav, body: Markup) -> Markup {
    page(Some(node), title, nav, body)
}
