//! The Backup center: the browser UI `stowage serve` serves at `/` and `/ui/*` beside the API
//! (ARCHITECTURE.md, "The Backup center"). Three static files checked in under
//! `workers/cli/ui/` and compiled into the binary: no build step, no npm, nothing read from
//! disk at run time. The page talks only to `/api/v1`, with the bearer token the user typed,
//! kept in the tab's sessionStorage; these routes need no token (they hold no data).

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// The page.
pub const INDEX_HTML: &str = include_str!("../../ui/index.html");
/// Its script.
pub const APP_JS: &str = include_str!("../../ui/app.js");
/// Its style sheet.
pub const APP_CSS: &str = include_str!("../../ui/app.css");

/// Only this origin's scripts and styles, no inline script, no framing: an injected string
/// cannot run and read the token from sessionStorage.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// The routes of the Backup center, mounted at the root of the server (`/` and `/ui/*`).
pub fn router() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route("/ui", get(|| async { Redirect::permanent("/") }))
        .route("/ui/", get(|| async { Redirect::permanent("/") }))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route("/ui/{*path}", get(not_found))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The files change with the binary; the browser asks again each time (they are small).
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "no such file in the Backup center; open / (the API is under /api/v1)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_the_embedded_script_and_style_sheet() {
        assert!(INDEX_HTML.contains(r#"src="/ui/app.js""#));
        assert!(INDEX_HTML.contains(r#"href="/ui/app.css""#));
        // No inline script: the CSP would refuse it.
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        // The script builds the page with textContent, never from strings of HTML.
        assert!(!APP_JS.contains("innerHTML"), "no innerHTML in app.js");
        assert!(!APP_JS.contains("eval("), "no eval in app.js");
    }
}
