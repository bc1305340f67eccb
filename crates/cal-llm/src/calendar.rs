//! The calendar service, `calendar.v1.Calendar/ListSessions`, in two versions: v1 lists the
//! sessions; v2 also has each abstract summarized by the LLM API, which it reaches through
//! the egress proxy (the only way out of `apps`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::llm::LlmClient;

pub const SERVICE: &str = "calendar.v1.Calendar";
pub const LIST_SESSIONS: &str = "/calendar.v1.Calendar/ListSessions";

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListSessionsRequest {
    #[prost(bool, tag = "1")]
    pub summarize: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Session {
    #[prost(string, tag = "1")]
    pub title: String,
    #[prost(string, tag = "2")]
    pub summary: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListSessionsReply {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(message, repeated, tag = "2")]
    pub sessions: Vec<Session>,
}

const SESSIONS: [(&str, &str); 3] = [
    (
        "Gateway API for platform teams",
        "One set of resources describes ingress, mesh and egress traffic without vendor annotations.",
    ),
    (
        "Canaries without client changes",
        "A GRPCRoute on a Service splits calls between versions, per call, behind the same address.",
    ),
    (
        "Egress you can audit",
        "An EgressNetwork with routes as an allowlist lets a workload reach one API and nothing else.",
    ),
];

/// One version of the service.
#[derive(Clone)]
pub struct Calendar {
    version: &'static str,
    /// v2 only: how it reaches the LLM API.
    llm: Option<Arc<LlmClient>>,
}

impl Calendar {
    pub fn v1() -> Self {
        Self {
            version: "calendar",
            llm: None,
        }
    }

    pub fn v2(llm: Arc<LlmClient>) -> Self {
        Self {
            version: "calendar-v2",
            llm: Some(llm),
        }
    }

    async fn list(&self, summarize: bool) -> Result<ListSessionsReply, Status> {
        let mut sessions = Vec::new();
        for (title, abstract_text) in SESSIONS {
            let summary = match (&self.llm, summarize) {
                (Some(llm), true) => llm
                    .summarize(abstract_text)
                    .await
                    .map_err(|e| Status::unavailable(format!("LLM API: {e:#}")))?,
                _ => String::new(),
            };
            sessions.push(Session {
                title: title.to_string(),
                summary,
            });
        }
        Ok(ListSessionsReply {
            version: self.version.to_string(),
            sessions,
        })
    }

    /// Serves on `addr` until the task is dropped.
    pub async fn serve(self, addr: SocketAddr) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Server::builder()
            .add_service(self)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await?;
        Ok(())
    }
}

impl NamedService for Calendar {
    const NAME: &'static str = SERVICE;
}

impl tower::Service<http::Request<Body>> for Calendar {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let calendar = self.clone();
        Box::pin(async move {
            if request.uri().path() != LIST_SESSIONS {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let list = tower::service_fn(move |request: Request<ListSessionsRequest>| {
                let calendar = calendar.clone();
                async move {
                    let reply = calendar.list(request.get_ref().summarize).await?;
                    Ok::<_, Status>(Response::new(reply))
                }
            });
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
            Ok(grpc.unary(list, request).await)
        })
    }
}

/// One `ListSessions` call on `channel`.
pub async fn list_sessions(channel: Channel, summarize: bool) -> Result<ListSessionsReply, Status> {
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let reply: Response<ListSessionsReply> = client
        .unary(
            Request::new(ListSessionsRequest { summarize }),
            PathAndQuery::from_static(LIST_SESSIONS),
            ProstCodec::default(),
        )
        .await?;
    Ok(reply.into_inner())
}
