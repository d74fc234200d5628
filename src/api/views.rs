//! JSON shapes of scripts, versions, builds and templates in API responses.

use serde_json::{Value, json};

use crate::controller::Deployed;
use crate::store::{BuildRecord, Script, ScriptVersion};
use crate::templates::Template;

pub fn version(version: &ScriptVersion) -> Value {
    json!({
        "name": version.name,
        "version": version.version,
        "template": version.template,
        "entry": version.entry,
        "source_hash": version.source_hash,
        "source_bytes": version.source_bytes,
        "build_key": version.build_key,
        "created_at_ms": version.created_at_ms,
        "settings": version.settings,
        // Names only: secret values never leave the server.
        "secrets": version.secrets.names(),
    })
}

pub fn script_summary(script: &Script, instances: usize) -> Value {
    let mut body = version(&script.current);
    body["created_at_ms"] = script.created_at_ms.into();
    body["updated_at_ms"] = script.current.created_at_ms.into();
    body["instances"] = instances.into();
    body
}

pub fn build_summary(record: &BuildRecord) -> Value {
    json!({
        "key": record.key,
        "succeeded": record.succeeded,
        "finished_at_ms": record.finished_at_ms,
        "duration_ms": record.duration_ms,
    })
}

pub fn template(template: &Template) -> Value {
    json!({
        "name": template.spec.name,
        "version": template.spec.version,
        "extensions": template.spec.extensions,
        "entry": template.spec.entry,
        "dependency_file": template.spec.dependencies.as_ref().map(|dependencies| &dependencies.file),
        "interpreter": template.interpreter,
    })
}

pub fn deployed(deployed: &Deployed) -> Value {
    let mut body = version(&deployed.version);
    body["build"] = deployed.build.as_ref().map(build_summary).unwrap_or(Value::Null);
    body["build"]["outcome"] = serde_json::to_value(deployed.outcome).unwrap_or_default();
    body
}
