//! `qdrant.Qdrant`: the health check clients call on connect.

use qdrant_client::qdrant::qdrant_server::Qdrant;
use qdrant_client::qdrant::{HealthCheckReply, HealthCheckRequest};
use tonic::{Request, Response, Status};

/// The Qdrant version whose gRPC API this server speaks: that of the `qdrant-client`
/// it is built against. qdrant-client compares it with its own version on connect and
/// warns when the minor versions differ by more than one.
pub const QDRANT_API_VERSION: &str = "1.20.0";

/// How the server names itself in health checks and at REST's `GET /`.
pub fn title() -> String {
    format!("qdrant-dev-server {} (qdrant-edge engine; dev/test only)", env!("CARGO_PKG_VERSION"))
}

/// Answers health checks; the server is healthy whenever it answers at all.
pub struct HealthService;

#[tonic::async_trait]
impl Qdrant for HealthService {
    async fn health_check(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckReply>, Status> {
        Ok(Response::new(HealthCheckReply {
            title: title(),
            version: QDRANT_API_VERSION.to_owned(),
            commit: None,
        }))
    }
}
