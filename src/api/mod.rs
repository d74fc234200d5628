//! The HTTP API under `/v1`. Handlers translate between HTTP and the
//! controller; every error leaves through [`ApiError`]'s response, the one
//! place where an error kind becomes a status.

mod http;
mod invoke;
mod views;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
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
        .route("/v1/http/{name}", any(http::http_root))
        .route("/v1/http/{name}/", any(http::http_root))
        .route("/v1/http/{name}/{*path}", any(http::http_path))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(crate::error::ErrorKind::NotFound, "no such API route") })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            // The route exists, so this is an invalid request, returned with
            // the status HTTP defines for it.
            let error = ApiError::invalid(format!("method {method} is not allowed on this route"));
            (StatusCode::METHOD_NOT_ALLOWED, axum::Json(error.body()))
        })
        .with_state(controller)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.details.get("retry_after_seconds").and_then(|value| value.as_u64());
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

async fn metrics(State(controller): State<AppState>) -> impl IntoResponse {
    // prometheus-client writes the OpenMetrics text format, which Prometheus reads.
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], controller.render_metrics())
}

async fn list_templates(State(controller): State<AppState>) -> impl IntoResponse {
    let mut templates: Vec<_> = controller.templates.all().map(views::template).collect();
    templates.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    axum::Json(json!({ "templates": templates }))
}

async fn list_scripts(State(controller): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut scripts = Vec::new();
    for script in controller.scripts()? {
        let mut summary = views::script_summary(&script, controller.instance_count(&script.current.name));
        let build = controller.build_record(&script.current.build_key)?;
        summary["build"] = match build {
            Some(record) if record.succeeded => "succeeded".into(),
            Some(_) => "failed".into(),
            None => "not built".into(),
        };
        scripts.push(summary);
    }
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
    /// Streams build progress as JSON lines; see [`deploy_with_progress`].
    #[serde(default)]
    progress: bool,
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
    let request = DeployRequest { name, kind, body, content_length, secrets };
    if query.progress {
        return Ok(deploy_with_progress(controller, request));
    }
    let deployed = controller.deploy(request, None).await?;
    Ok((StatusCode::CREATED, axum::Json(views::deployed(&deployed))).into_response())
}

/// Runs a deploy and streams its progress as JSON lines while it runs:
/// `{"progress": "...", "elapsed_ms": N}` for each step, then one
/// `{"result": {...}}` or `{"error": {...}}` line. The status is 200 because
/// it is sent before the outcome is known; the last line carries it.
fn deploy_with_progress(controller: AppState, request: DeployRequest) -> Response {
    let (progress_sender, mut progress_receiver) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (line_sender, line_receiver) = tokio::sync::mpsc::unbounded_channel::<Result<String, std::io::Error>>();
    let started = std::time::Instant::now();
    let forward = line_sender.clone();
    tokio::spawn(async move {
        while let Some(step) = progress_receiver.recv().await {
            let line = json!({ "progress": step, "elapsed_ms": started.elapsed().as_millis() as u64 });
            let _ = forward.send(Ok(format!("{line}\n")));
        }
    });
    tokio::spawn(async move {
        let line = match controller.deploy(request, Some(progress_sender)).await {
            Ok(deployed) => json!({ "result": views::deployed(&deployed) }),
            Err(error) => error.body(),
        };
        let _ = line_sender.send(Ok(format!("{line}\n")));
    });
    let stream = tokio_stream_from(line_receiver);
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .expect("static response parts are valid")
}

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |context| receiver.poll_recv(context))
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
    /// With `build`: the log of this build key (as a failed deploy
    /// reports it) instead of the current version's.
    key: Option<String>,
}

async fn script_logs(
    State(controller): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    validate_name(&name)?;
    let script = controller.script(&name)?;
    if query.build {
        let key = query.key.unwrap_or(script.current.build_key);
        let record = controller.build_record(&key)?;
        let log = record.map(|record| record.log).unwrap_or_default();
        return Ok(axum::Json(json!({ "script": name, "build_key": key, "build_log": log })));
    }
    Ok(axum::Json(json!({ "script": name, "lines": controller.logs(&name), "calls": controller.calls(&name) })))
}
