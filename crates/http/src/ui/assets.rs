//! The UI's static files, compiled into the binary: our stylesheet, our script and our icon. Nothing else is
//! ever loaded, and nothing comes from another host.
//!
//! Links carry `?v=<content hash>`, so a browser may keep a file for a year and still never runs a stale one
//! after an upgrade.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 3] = [
    Asset { name: "kairos.css", content_type: "text/css; charset=utf-8", body: include_str!("assets/kairos.css") },
    Asset { name: "kairos.js", content_type: "text/javascript; charset=utf-8", body: include_str!("assets/kairos.js") },
    Asset { name: "icon.svg", content_type: "image/svg+xml", body: include_str!("assets/icon.svg") },
];

/// FNV-1a over every asset: changes whenever any of them does.
fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in ASSETS.iter().flat_map(|a| a.body.bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{:08x}", hash >> 32)
    })
}

/// The address of an asset, with its cache-busting version.
pub fn url(name: &str) -> String {
    format!("/ui/assets/{name}?v={}", version())
}

pub async fn serve(Path(file): Path<String>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == file) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    response
}
