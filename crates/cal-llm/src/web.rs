//! The web app: a page listing the conference sessions, fetched from the calendar service
//! over gRPC at the `calendar` Service's address (where the canary split happens).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::transport::Channel;

use crate::calendar;

/// Serves the page on `addr`; `calendar` is a channel to the calendar Service.
pub async fn serve(addr: SocketAddr, calendar: Channel) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let calendar = calendar.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    let calendar = calendar.clone();
                    async move { Ok::<_, Infallible>(page(calendar).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

async fn page(calendar: Channel) -> Response<Full<Bytes>> {
    let (status, html) = match calendar::list_sessions(calendar, true).await {
        Ok(reply) => {
            let items: String = reply
                .sessions
                .iter()
                .map(|s| {
                    let summary = if s.summary.is_empty() {
                        String::new()
                    } else {
                        format!("<br><small>{}</small>", escape(&s.summary))
                    };
                    format!("<li>{}{summary}</li>\n", escape(&s.title))
                })
                .collect();
            (
                StatusCode::OK,
                format!(
                    "<!doctype html>\n<title>Cal-LLM</title>\n<h1>Sessions</h1>\n<ul>\n{items}</ul>\n<p>served by {}</p>\n",
                    escape(&reply.version)
                ),
            )
        }
        Err(status) => (
            StatusCode::BAD_GATEWAY,
            format!(
                "<!doctype html>\n<title>Cal-LLM</title>\n<p>calendar unavailable: {}</p>\n",
                escape(status.message())
            ),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(html)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
