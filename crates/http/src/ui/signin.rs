//! Signing in to the UI with an ACL token (only with `--acl-enabled`): the sign-in page takes a token's secret,
//! checks it as the API would, and keeps it in a cookie that scripts cannot read (`HttpOnly`) and browsers never
//! send with a request another site started (`SameSite=Strict`); the edge ([`crate::api::auth`]) accepts that
//! cookie like the `X-Dkron-Token` header. Forged cross-site form posts are refused before they get here (the
//! edge's cross-site check), sign-in and sign-out included. Sign-out clears the cookie.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use kairos_model::Timestamp;
use kairos_model::acl::{is_uuid, secret_hash};
use maud::{Markup, html};

use super::layout::{Nav, page};
use crate::api::AppState;

/// The cookie that holds the secret of the signed-in token (the edge reads it, see `api::auth`).
pub use crate::api::auth::SIGNIN_COOKIE as COOKIE;

fn form(error: Option<&str>) -> Markup {
    html! {
        h1 { "Sign in" }
        p { "Access control is enabled on this cluster. Sign in with the secret of an ACL token." }
        @if let Some(error) = error { p.notice.error role="alert" { (error) } }
        form method="post" action="/ui/signin" {
            label for="secret" { "Token secret" }
            input #secret name="secret" type="password" autocomplete="current-password" required;
            button type="submit" { "Sign in" }
        }
    }
}

/// `GET /ui/signin`.
pub async fn page_form(State(node): State<AppState>) -> Markup {
    page(Some(&node), "Sign in", Nav::None, form(None))
}

/// `POST /ui/signin` (a form with `secret`): sets the cookie and goes to the dashboard, or shows the form again.
pub async fn sign_in(State(node): State<AppState>, body: Bytes) -> Response {
    let secret = form_urlencoded::parse(&body)
        .find(|(key, _)| key == "secret")
        .map(|(_, value)| value.trim().to_string())
        .unwrap_or_default();
    let refused = |message: &str| {
        (StatusCode::UNAUTHORIZED, page(Some(&node), "Sign in", Nav::None, form(Some(message)))).into_response()
    };
    if !is_uuid(&secret) {
        return refused("That is not a token secret (a secret is a UUID).");
    }
    let token = match node.state.acl_token_by_secret(&secret_hash(&secret)) {
        Ok(Some(token)) => token,
        Ok(None) => return refused("No such token (never issued, or deleted)."),
        Err(err) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("store: {err}")).into_response(),
    };
    if token.expired(Timestamp::now()) {
        return refused("This token has expired.");
    }
    // Under TLS the cookie never travels over plain HTTP (`Secure`).
    let secure = if node.config.tls.is_some() { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict{secure}");
    with_cookie(Redirect::to("/ui/").into_response(), &cookie)
}

/// `POST /ui/signout`.
pub async fn sign_out() -> Response {
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    with_cookie(Redirect::to("/ui/signin").into_response(), &cookie)
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
