//! Azurite (3.35) answers Get Page Ranges with `prevsnapshot` as if the parameter were absent:
//! the whole page list of the newer snapshot, no `ClearRange`. This proxy stands in front of
//! it, passes every other request through, and answers a diff request (`prevsnapshot` or
//! `x-ms-previous-snapshot-url`) the way the Blob service documents it: the pages that differ
//! between the two versions, as `PageRange` when the newer version holds data there and
//! `ClearRange` when it no longer does, interleaved in offset order. It computes them from
//! the two snapshots' page lists and contents as Azurite stores them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use azure_core::http::Url;

const AZURITE: &str = "http://127.0.0.1:10000";
/// Headers that describe one connection's framing, set anew on each side of the proxy.
const HOP_BY_HOP: &[&str] = &[
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
];

#[derive(Clone)]
struct Proxy {
    http: reqwest::Client,
    diffs: Arc<AtomicUsize>,
    base: String,
}

pub struct DiffProxy {
    /// `http://127.0.0.1:<port>/devstoreaccount1`
    pub endpoint: String,
    /// Diff requests answered.
    pub diffs: Arc<AtomicUsize>,
}

impl DiffProxy {
    pub async fn start() -> DiffProxy {
        crate::azurite::require_azurite();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let diffs = Arc::new(AtomicUsize::new(0));
        let proxy = Proxy {
            http: reqwest::Client::builder().build().unwrap(),
            diffs: diffs.clone(),
            base: base.clone(),
        };
        let app = axum::Router::new().fallback(handle).with_state(proxy);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        DiffProxy {
            endpoint: format!("{base}/devstoreaccount1"),
            diffs,
        }
    }
}

fn pairs(query: &str) -> Vec<(String, String)> {
    Url::parse(&format!("http://x/?{query}"))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

fn encode(pairs: &[(String, String)]) -> String {
    let mut url = Url::parse("http://x/").unwrap();
    url.query_pairs_mut().extend_pairs(pairs);
    url.query().unwrap_or("").to_owned()
}

async fn handle(
    State(p): State<Proxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = pairs(uri.query().unwrap_or(""));
    let is = |k: &str, v: Option<&str>| {
        query
            .iter()
            .any(|(qk, qv)| qk == k && v.is_none_or(|v| qv == v))
    };
    let previous_url = headers
        .get("x-ms-previous-snapshot-url")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if method == Method::GET
        && is("comp", Some("pagelist"))
        && (is("prevsnapshot", None) || previous_url.is_some())
    {
        p.diffs.fetch_add(1, Ordering::SeqCst);
        return diff(&p, uri.path(), &query, previous_url, &headers).await;
    }
    let mut request = p.http.request(
        method,
        format!(
            "{AZURITE}{}",
            uri.path_and_query().map(|x| x.as_str()).unwrap_or("/")
        ),
    );
    for (k, v) in &headers {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            request = request.header(k, v);
        }
    }
    let answer = request.body(body).send().await.unwrap();
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
    let mut out = HeaderMap::new();
    for (k, v) in answer.headers() {
        if !HOP_BY_HOP.contains(&k.as_str()) {
            out.insert(k, v.clone());
        }
    }
    let bytes = answer.bytes().await.unwrap();
    (status, out, bytes).into_response()
}

/// Page ranges (inclusive ends, as the service lists them) of `path?query` at Azurite.
async fn ranges(
    p: &Proxy,
    path: &str,
    query: &[(String, String)],
    version: &str,
) -> Vec<(u64, u64)> {
    let url = format!("{AZURITE}{path}?{}", encode(query));
    let xml = p
        .http
        .get(url)
        .header("x-ms-version", version)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut rest = xml.as_str();
    while let Some(i) = rest.find("<PageRange>") {
        let element = &rest[i..rest[i..].find("</PageRange>").unwrap() + i];
        let num = |tag: &str| {
            let s = element.find(&format!("<{tag}>")).unwrap() + tag.len() + 2;
            element[s..s + element[s..].find('<').unwrap()]
                .parse::<u64>()
                .unwrap()
        };
        out.push((num("Start"), num("End")));
        rest = &rest[i + element.len()..];
    }
    out
}

async fn read(
    p: &Proxy,
    path: &str,
    query: &[(String, String)],
    start: u64,
    end: u64,
    version: &str,
) -> Vec<u8> {
    let url = format!("{AZURITE}{path}?{}", encode(query));
    let answer = p
        .http
        .get(url)
        .header("x-ms-version", version)
        .header("x-ms-range", format!("bytes={start}-{end}"))
        .send()
        .await
        .unwrap();
    assert!(
        answer.status().is_success(),
        "Azurite read {start}-{end}: {}",
        answer.status()
    );
    answer.bytes().await.unwrap().to_vec()
}

async fn diff(
    p: &Proxy,
    path: &str,
    query: &[(String, String)],
    previous_url: Option<String>,
    headers: &HeaderMap,
) -> Response {
    let version = headers
        .get("x-ms-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("2021-08-06")
        .to_owned();
    // The newer version: the request without the diff parameters; the older one: the same
    // blob at `prevsnapshot`, or the blob the previous-snapshot URL names (through us).
    let current: Vec<(String, String)> = query
        .iter()
        .filter(|(k, _)| k != "prevsnapshot")
        .cloned()
        .collect();
    let (prev_path, prev_query) = match previous_url {
        Some(url) => {
            let url = Url::parse(&url).unwrap();
            assert!(
                url.as_str().starts_with(&p.base),
                "previous-snapshot URL {url} is not ours"
            );
            let mut q = pairs(url.query().unwrap_or(""));
            q.push(("comp".into(), "pagelist".into()));
            (url.path().to_owned(), q)
        }
        None => {
            let prev = query
                .iter()
                .find(|(k, _)| k == "prevsnapshot")
                .unwrap()
                .1
                .clone();
            let mut q: Vec<(String, String)> = current
                .iter()
                .filter(|(k, _)| k != "snapshot")
                .cloned()
                .collect();
            q.push(("snapshot".into(), prev));
            (path.to_owned(), q)
        }
    };
    let now = ranges(p, path, &current, &version).await;
    let before = ranges(p, &prev_path, &prev_query, &version).await;
    let data = |q: &[(String, String)]| {
        q.iter()
            .filter(|(k, _)| k != "comp")
            .cloned()
            .collect::<Vec<_>>()
    };
    let (now_data, before_data) = (data(&current), data(&prev_query));
    let mut union: Vec<(u64, u64)> = now.iter().chain(&before).copied().collect();
    union.sort();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in union {
        match merged.last_mut() {
            Some(last) if s <= last.1 + 1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let in_now = |page: u64| now.iter().any(|(s, e)| *s <= page && page <= *e);
    // (start, end inclusive, written?) per differing page, then runs of the same kind.
    let mut changes: Vec<(u64, u64, bool)> = Vec::new();
    for (s, e) in merged {
        let mut at = s;
        while at <= e {
            let end = e.min(at + (4 << 20) - 1);
            let a = read(p, path, &now_data, at, end, &version).await;
            let b = read(p, &prev_path, &before_data, at, end, &version).await;
            for (i, (x, y)) in a.chunks(512).zip(b.chunks(512)).enumerate() {
                if x != y {
                    let page = at + i as u64 * 512;
                    let written = in_now(page);
                    match changes.last_mut() {
                        Some(last) if last.1 + 1 == page && last.2 == written => {
                            last.1 = page + 511
                        }
                        _ => changes.push((page, page + 511, written)),
                    }
                }
            }
            at = end + 1;
        }
    }
    let mut xml = String::from("\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><PageList>");
    for (s, e, written) in changes {
        let tag = if written { "PageRange" } else { "ClearRange" };
        xml.push_str(&format!("<{tag}><Start>{s}</Start><End>{e}</End></{tag}>"));
    }
    xml.push_str("<NextMarker /></PageList>");
    (
        StatusCode::OK,
        [
            ("content-type", "application/xml"),
            ("x-ms-version", version.as_str()),
        ],
        xml,
    )
        .into_response()
}
