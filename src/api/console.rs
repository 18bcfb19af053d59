//! The web console at `/ui`: static files bundled into the binary at build
//! time (`build.rs`, from `console/`). They need no key (the guard lists
//! their routes as public): the console asks for one and sends it with each
//! API call, like any other client.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

pub struct Asset {
    pub name: &'static str,
    pub mime: &'static str,
    /// A content-hashed name, cached for good.
    pub immutable: bool,
    pub body: &'static [u8],
    pub gzip: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

// The console loads only its own files and talks only to this origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(|h: HeaderMap| async move { serve(ASSETS, "index.html", &h) }),
        )
        .route(
            "/ui/{file}",
            get(|Path(file): Path<String>, h: HeaderMap| async move { serve(ASSETS, &file, &h) }),
        )
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let gzip = parts.next().is_some_and(|c| c.eq_ignore_ascii_case("gzip"));
            // `q=0` (or 0.0, 0.000) refuses it; an unreadable weight is taken as no.
            let weight = parts
                .find_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok());
            gzip && weight.is_some_and(|q| q > 0.0)
        })
}

/// `name` from `assets` (the bundle; empty when built without it).
fn serve(assets: &[Asset], name: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = assets.iter().find(|a| a.name == name) else {
        let message = if assets.is_empty() {
            "the web console is not in this build (built with INFRA_CONSOLE=skip)".to_string()
        } else {
            format!("no console file {name:?}")
        };
        return super::error::ApiError::new(StatusCode::NOT_FOUND, message).into_response();
    };
    let gzip = accepts_gzip(headers);
    let mut resp = if gzip { asset.gzip } else { asset.body }.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.mime));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    let cache = if asset.immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(enc: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(enc).unwrap());
        h
    }

    #[test]
    fn gzip_only_when_the_client_takes_it() {
        assert!(accepts_gzip(&with("gzip, deflate, br")));
        assert!(accepts_gzip(&with("br;q=1.0, GZIP;q=0.5")));
        assert!(!accepts_gzip(&with("gzip;q=0")));
        assert!(!accepts_gzip(&with("gzip; q=0.000, br")));
        assert!(!accepts_gzip(&with("gzip;q=x")));
        assert!(accepts_gzip(&with("gzip;q=0.001")));
        assert!(!accepts_gzip(&with("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn a_build_without_the_console_says_so() {
        let resp = serve(&[], "index.html", &HeaderMap::new());
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("not in this build (built with INFRA_CONSOLE=skip)"),
            "{text}"
        );
    }

    #[test]
    fn the_bundle_is_embedded_and_its_page_names_its_files() {
        let index = ASSETS.iter().find(|a| a.name == "index.html").expect("index.html");
        let html = std::str::from_utf8(index.body).unwrap();
        let others: Vec<_> = ASSETS.iter().filter(|a| a.immutable).collect();
        assert!(others.iter().any(|a| a.name.ends_with(".js")));
        assert!(others.iter().any(|a| a.name.ends_with(".css")));
        for a in others {
            assert!(html.contains(&format!("/ui/{}", a.name)), "{} not referenced", a.name);
        }
        for a in ASSETS {
            assert!(a.gzip.len() < a.body.len() || a.body.len() < 1024, "{} gzipped", a.name);
        }
    }
}
