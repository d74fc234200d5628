//! The HTTP API under `/v1`. Handlers translate between HTTP and the
//! controller; every error leaves through [`ApiError`]'s response, the one
//! place where an error kind becomes a status.

mod invoke;
mod views;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::controller::{Controller, DeployRequest, validate_name};
use crate::error::ApiError;
use crate::upload::{ArchiveFormat, UploadKind};

pub type AppState = Arc<Controller>;

pub fn router(controller: Arc<Controller>) -> Router {
    Router::new()
        .route("/v1/healthz", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/v1/templates", get(list_templates))
        .route("/v1/scripts", get(list_scripts))
        .route("/v1/scripts/{name}", get(show_script).put(deploy_script).delete(delete_script))
        .route("/v1/scripts/{name}/invoke", post(invoke::invoke_script))
        .route("/v1/scripts/{name}/logs", get(script_logs))
        .fallback(|| async { ApiError::new(crate::error::ErrorKind::NotFound, "no such API route") })
        .with_state(controller)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.body())).into_response()
    }
}

async fn list_templates(State(controller): State<AppState>) -> impl IntoResponse {
    let mut templates: Vec<_> = controller.templates.all().map(views::template).collect();
    templates.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    axum::Json(json!({ "templates": templates }))
}

async fn list_scripts(State(controller): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let scripts: Vec<_> = controller
        .scripts()?
        .iter()
        .map(|script| views::script_summary(script, controller.instance_count(&script.current.name)))
        .collect();
    Ok(axum::Json(json!({ "scripts": scripts })))
}

async fn show_script(State(controller): State<AppState>, Path(name): Path<String>) -> Result<impl IntoResponse, ApiError> {
    validate_name(&name)?;
    let script = controller.script(&name)?;
    let versions = controller.versions(&name)?;
    let build = controller.build_record(&script.current.build_key)?;
    let mut body = views::script_summary(&script, controller.instance_count(&name));
    body["versions"] = versions.iter().map(views::version).collect();
    body["build"] = build.as_ref().map(views::build_summary).unwrap_or(serde_json::Value::Null);
    Ok(axum::Json(body))
}

#[derive(Deserialize)]
struct DeployQuery {
    /// The uploaded file's name, for a single-file upload.
    filename: Option<String>,
}

async fn deploy_script(
    State(controller): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<DeployQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    let kind = match (ArchiveFormat::from_content_type(content_type), query.filename) {
        (Some(format), _) => UploadKind::Archive(format),
        (None, Some(file_name)) => UploadKind::File { file_name },
        (None, None) => {
            return Err(ApiError::invalid(
                "send a folder as an archive (Content-Type application/x-tar, application/gzip or application/zip) or a single file with ?filename=NAME",
            ));
        }
    };
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok());
    let secrets = match headers.get(SECRETS_HEADER) {
        Some(value) => parse_secrets_header(value.as_bytes())?,
        None => Default::default(),
    };
    let deployed = controller.deploy(DeployRequest { name, kind, body, content_length, secrets }).await?;
    let mut body = views::version(&deployed.version);
    body["build"] = deployed.build.as_ref().map(views::build_summary).unwrap_or(serde_json::Value::Null);
    body["build"]["outcome"] = serde_json::to_value(deployed.outcome).unwrap_or_default();
    Ok((StatusCode::CREATED, axum::Json(body)))
}

/// The deploy header that carries secret changes: base64 of a JSON object
/// mapping each name to its value, or to null to remove it. Base64 lets a
/// value hold any text, which a header value cannot.
pub const SECRETS_HEADER: &str = "kubefaas-secrets";

fn parse_secrets_header(value: &[u8]) -> Result<std::collections::BTreeMap<String, Option<String>>, ApiError> {
    use base64::Engine;
    let invalid = |reason: String| {
        ApiError::invalid(format!(
            "invalid Kubefaas-Secrets header: {reason}; send base64 of a JSON object such as {{\"API_TOKEN\": \"value\", \"OLD\": null}}"
        ))
    };
    let json = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|error| invalid(format!("not base64 ({error})")))?;
    serde_json::from_slice(&json).map_err(|error| invalid(format!("not a JSON object of strings ({error})")))
}

async fn delete_script(State(controller): State<AppState>, Path(name): Path<String>) -> Result<impl IntoResponse, ApiError> {
    validate_name(&name)?;
    controller.remove(&name).await?;
    Ok(axum::Json(json!({ "deleted": name })))
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    build: bool,
}

async fn script_logs(
    State(controller): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    validate_name(&name)?;
    let script = controller.script(&name)?;
    if query.build {
        let record = controller.build_record(&script.current.build_key)?;
        let log = record.map(|record| record.log).unwrap_or_default();
        return Ok(axum::Json(json!({ "script": name, "build_key": script.current.build_key, "build_log": log })));
    }
    Ok(axum::Json(json!({ "script": name, "lines": controller.logs(&name) })))
}
