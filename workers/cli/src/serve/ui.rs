//! The Backup center's hook: `/` and `/ui/*` belong to the browser UI, served by `stowage
//! serve` beside the API. The UI work fills this module (static assets checked in, or
//! embedded); the API never uses these paths.

use axum::Router;
use axum::response::Html;
use axum::routing::get;

/// The routes of the Backup center, mounted at the root of the server (`/` and `/ui/*`).
/// Today a placeholder page that names the API.
pub fn router() -> Router {
    Router::new()
        .route("/", get(placeholder))
        .route("/ui", get(placeholder))
        .route("/ui/{*path}", get(placeholder))
}

async fn placeholder() -> Html<&'static str> {
    Html(
        "<!doctype html><meta charset=utf-8><title>Stowage</title>\
         <h1>Stowage</h1><p>The Backup center is not built yet. The JSON API is at \
         <code>/api/v1</code> (see <code>schemas/openapi.yaml</code>), e.g. \
         <code>/api/v1/instances</code>.</p>",
    )
}
