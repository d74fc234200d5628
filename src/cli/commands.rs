//! The client commands. Results go to stdout; progress, script logs and
//! errors go to stderr, so `kubefaas invoke` output can be piped.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use super::client::{Client, ClientError};

/// Folders left out when a folder is packed for upload.
const SKIPPED_FOLDERS: &[&str] = &[".git", "__pycache__"];

pub fn deploy(
    client: &Client,
    path: &Path,
    name: Option<String>,
    secrets: &[String],
    removed_secrets: &[String],
) -> anyhow::Result<ExitCode> {
    let secret_changes = secret_changes(secrets, removed_secrets)?;
    let metadata = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let name = match name {
        Some(name) => name,
        None => default_name(path),
    };
    // Checked here too, so an invalid name fails before a large upload.
    if let Err(error) = crate::controller::validate_name(&name) {
        eprintln!("error: {error}");
        return Ok(ExitCode::FAILURE);
    }
    let file_name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let started = Instant::now();
    let (content_type, query, file) = if metadata.is_dir() {
        eprintln!("packing {}", path.display());
        ("application/x-tar", String::new(), pack_folder(path)?)
    } else if let Some(content_type) = archive_content_type(&file_name) {
        (content_type, String::new(), std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?)
    } else {
        let query = format!("?filename={}", encode_query_value(&file_name));
        ("application/octet-stream", query, std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?)
    };
    let size = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
    eprintln!("uploading {name} ({size} bytes)");
    let body = reqwest::blocking::Body::sized(file, size);
    let mut headers = Vec::new();
    if !secret_changes.is_empty() {
        let json = serde_json::to_vec(&secret_changes).context("encoding the secrets")?;
        headers.push(("kubefaas-secrets", BASE64.encode(json)));
    }
    let separator = if query.is_empty() { '?' } else { '&' };
    let path = format!("/v1/scripts/{name}{query}{separator}progress=true");
    let response = match client.put_streaming(&path, content_type, &headers, body) {
        Ok(response) => response,
        Err(error) => return report(error),
    };
    let mut progress = ProgressPrinter::new();
    for line in std::io::BufReader::new(response).lines() {
        let line = line.context("reading the deploy progress")?;
        let event: Value = serde_json::from_str(&line).with_context(|| format!("invalid progress line {line:?}"))?;
        if let Some(step) = event["progress"].as_str() {
            progress.step(event["elapsed_ms"].as_u64().unwrap_or(0), step);
        } else if event["error"].is_object() {
            progress.finish();
            let error = super::client::error_from_body(0, &event, line.clone());
            let build_failed = event["error"]["kind"] == "build_failed";
            if build_failed {
                // The whole log, not only the tail in the error.
                let key = event["error"]["build_key"].as_str().unwrap_or_default();
                if let Ok(logs) = client.get(&format!("/v1/scripts/{name}/logs?build=true&key={key}")) {
                    eprintln!("--- build log ---\n{}", logs["build_log"].as_str().unwrap_or("").trim_end());
                }
                eprintln!("error: {error}");
                if let Some(version) = event["error"]["serving_version"].as_u64() {
                    eprintln!("version {version} of {name} keeps serving");
                }
                return Ok(ExitCode::FAILURE);
            }
            return report(error);
        } else if let Some(result) = event.get("result") {
            progress.finish();
            let build = &result["build"];
            let outcome = build["outcome"].as_str().unwrap_or("built").replace('_', " ");
            eprintln!(
                "build {}: {outcome} in {} ms (total {} ms)",
                short_key(build["key"].as_str().unwrap_or("")),
                build["duration_ms"],
                started.elapsed().as_millis()
            );
            println!(
                "deployed {} version {} (template {})",
                result["name"].as_str().unwrap_or(&name),
                result["version"],
                result["template"].as_str().unwrap_or("?")
            );
            return Ok(ExitCode::SUCCESS);
        }
    }
    anyhow::bail!("the server closed the connection before the deploy finished")
}

/// Prints build steps: one line redrawn in place on a terminal, plain
/// lines otherwise.
struct ProgressPrinter {
    terminal: bool,
    drawn: bool,
}

impl ProgressPrinter {
    fn new() -> ProgressPrinter {
        ProgressPrinter { terminal: std::io::stderr().is_terminal(), drawn: false }
    }

    fn step(&mut self, elapsed_ms: u64, step: &str) {
        let line = format!("[{:>6.1}s] {step}", elapsed_ms as f64 / 1000.0);
        if self.terminal {
            let width = 100;
            let shown: String = line.chars().take(width).collect();
            eprint!("\r\x1b[2K{shown}");
            self.drawn = true;
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

/// Collects `--secret` and `--remove-secret` into the changes the server
/// applies: a value sets a secret, null removes it.
fn secret_changes(secrets: &[String], removed: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut changes = Map::new();
    for secret in secrets {
        let (name, value) = match secret.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None => {
                let value = std::env::var(secret).with_context(|| {
                    format!("--secret {secret}: no environment variable {secret} to take the value from; write --secret {secret}=VALUE")
                })?;
                (secret.clone(), value)
            }
        };
        changes.insert(name, Value::String(value));
    }
    for name in removed {
        if changes.contains_key(name) {
            anyhow::bail!("secret {name} is both set with --secret and removed with --remove-secret");
        }
        changes.insert(name.clone(), Value::Null);
    }
    Ok(changes)
}

pub fn invoke(
    client: &Client,
    name: &str,
    data: Option<&str>,
    variables: &[String],
    meta: &[String],
    print_json: bool,
) -> anyhow::Result<ExitCode> {
    let mut request = Map::new();
    if let Some(payload) = read_payload(data)? {
        match String::from_utf8(payload) {
            Ok(text) => request.insert("payload".into(), text.into()),
            Err(error) => request.insert("payload_base64".into(), BASE64.encode(error.into_bytes()).into()),
        };
    }
    request.insert("variables".into(), parse_pairs("--var", variables)?.into());
    request.insert("meta".into(), parse_pairs("--meta", meta)?.into());
    let response = match client.post_json(&format!("/v1/scripts/{name}/invoke"), &Value::Object(request)) {
        Ok(response) => response,
        Err(error) => return report(error),
    };
    let mut stdout = std::io::stdout().lock();
    if print_json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&response)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    for line in response["logs"].as_array().into_iter().flatten() {
        eprintln!("log: {}", line.as_str().unwrap_or_default());
    }
    let payload = match (&response["payload"], response["payload_base64"].as_str()) {
        (_, Some(encoded)) => BASE64.decode(encoded).context("the server sent invalid payload_base64")?,
        (Value::String(text), None) => text.clone().into_bytes(),
        _ => Vec::new(),
    };
    stdout.write_all(&payload)?;
    if stdout.is_terminal() && !payload.ends_with(b"\n") && !payload.is_empty() {
        stdout.write_all(b"\n")?;
    }
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub fn list(client: &Client) -> anyhow::Result<ExitCode> {
    let response = match client.get("/v1/scripts") {
        Ok(response) => response,
        Err(error) => return report(error),
    };
    println!("{:<32} {:>7} {:<10} {:<10} {:>9}  UPDATED", "NAME", "VERSION", "TEMPLATE", "BUILD", "INSTANCES");
    for script in response["scripts"].as_array().into_iter().flatten() {
        println!(
            "{:<32} {:>7} {:<10} {:<10} {:>9}  {}",
            script["name"].as_str().unwrap_or(""),
            script["version"].to_string(),
            script["template"].as_str().unwrap_or(""),
            script["build"].as_str().unwrap_or(""),
            script["instances"].to_string(),
            format_time(&script["updated_at_ms"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn show(client: &Client, name: &str) -> anyhow::Result<ExitCode> {
    let response = match client.get(&format!("/v1/scripts/{name}")) {
        Ok(response) => response,
        Err(error) => return report(error),
    };
    println!("name:       {}", response["name"].as_str().unwrap_or(""));
    println!("version:    {}", response["version"]);
    println!("template:   {}", response["template"].as_str().unwrap_or(""));
    println!("entry:      {}", response["entry"].as_str().unwrap_or(""));
    println!("source:     {} bytes, hash {}", response["source_bytes"], short_key(response["source_hash"].as_str().unwrap_or("")));
    println!("build key:  {}", response["build_key"].as_str().unwrap_or(""));
    let build = &response["build"];
    if build.is_object() {
        let state = if build["succeeded"].as_bool() == Some(true) { "succeeded" } else { "failed" };
        println!("build:      {state} in {} ms, {}", build["duration_ms"], format_time(&build["finished_at_ms"]));
    }
    let settings = &response["settings"];
    let or_default = |value: &Value, unit: &str| match value {
        Value::Null => "server default".to_string(),
        value => format!("{value}{unit}"),
    };
    println!("memory:     {}", or_default(&settings["memory_mib"], " MiB"));
    println!("timeout:    {}", or_default(&settings["timeout_seconds"], " s"));
    println!("cpu weight: {}", or_default(&settings["cpu_weight"], ""));
    let network = if settings["network"] == Value::Bool(false) { "off" } else { "on" };
    println!("network:    {network}");
    for (name, value) in settings["env"].as_object().into_iter().flatten() {
        println!("env:        {name}={}", value.as_str().unwrap_or_default());
    }
    for name in response["secrets"].as_array().into_iter().flatten() {
        println!("secret:     {} (value hidden)", name.as_str().unwrap_or_default());
    }
    println!("instances:  {}", response["instances"]);
    println!("created:    {}", format_time(&response["created_at_ms"]));
    println!("versions:");
    for version in response["versions"].as_array().into_iter().flatten() {
        println!(
            "  {:>4}  {}  {}",
            version["version"].to_string(),
            format_time(&version["created_at_ms"]),
            short_key(version["build_key"].as_str().unwrap_or(""))
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn remove(client: &Client, name: &str) -> anyhow::Result<ExitCode> {
    match client.delete(&format!("/v1/scripts/{name}")) {
        Ok(_) => {
            println!("deleted {name}");
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => report(error),
    }
}

pub fn logs(client: &Client, name: &str, build: bool) -> anyhow::Result<ExitCode> {
    let query = if build { "?build=true" } else { "" };
    let response = match client.get(&format!("/v1/scripts/{name}/logs{query}")) {
        Ok(response) => response,
        Err(error) => return report(error),
    };
    if build {
        print!("{}", response["build_log"].as_str().unwrap_or(""));
        return Ok(ExitCode::SUCCESS);
    }
    for line in response["lines"].as_array().into_iter().flatten() {
        println!(
            "{} instance {} {}: {}",
            format_time(&line["at_ms"]),
            line["instance"],
            line["stream"].as_str().unwrap_or(""),
            line["text"].as_str().unwrap_or("")
        );
    }
    let calls = response["calls"].as_array().cloned().unwrap_or_default();
    if !calls.is_empty() {
        println!("\nrecent calls:");
        for call in calls {
            println!(
                "{} {} {:>9.1} ms {}",
                call["id"].as_str().unwrap_or(""),
                format_time(&call["started_at_ms"]),
                call["duration_ms"].as_f64().unwrap_or(0.0),
                call["outcome"].as_str().unwrap_or("")
            );
            for line in call["logs"].as_array().into_iter().flatten() {
                println!("    {}", line.as_str().unwrap_or(""));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn templates(client: &Client) -> anyhow::Result<ExitCode> {
    let response = match client.get("/v1/templates") {
        Ok(response) => response,
        Err(error) => return report(error),
    };
    println!("{:<10} {:<8} {:<12} {:<18} INTERPRETER", "NAME", "VERSION", "ENTRY", "DEPENDENCIES");
    for template in response["templates"].as_array().into_iter().flatten() {
        println!(
            "{:<10} {:<8} {:<12} {:<18} {}",
            template["name"].as_str().unwrap_or(""),
            template["version"].as_str().unwrap_or(""),
            template["entry"].as_str().unwrap_or(""),
            template["dependency_file"].as_str().unwrap_or("-"),
            template["interpreter"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints an error with the details a user needs to act on it.
fn report(error: ClientError) -> anyhow::Result<ExitCode> {
    eprintln!("error: {error}");
    if let ClientError::Api { body, .. } = &error {
        for (field, title) in [
            ("log_tail", "build log (end)"),
            ("stderr_tail", "script error output (end)"),
            ("traceback", "traceback"),
        ] {
            if let Some(text) = body[field].as_str() {
                eprintln!("--- {title} ---\n{}", text.trim_end());
            }
        }
    }
    Ok(ExitCode::FAILURE)
}

fn read_payload(data: Option<&str>) -> anyhow::Result<Option<Vec<u8>>> {
    match data {
        None => Ok(None),
        Some("-") => {
            let mut buffer = Vec::new();
            std::io::stdin().read_to_end(&mut buffer).context("reading the payload from stdin")?;
            Ok(Some(buffer))
        }
        Some(text) => match text.strip_prefix('@') {
            Some(file) => Ok(Some(std::fs::read(file).with_context(|| format!("reading payload file {file}"))?)),
            None => Ok(Some(text.as_bytes().to_vec())),
        },
    }
}

fn parse_pairs(flag: &str, pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut map = Map::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("invalid {flag} {pair:?}: write it as KEY=VALUE"))?;
        map.insert(key.to_string(), json!(value));
    }
    Ok(map)
}

/// Derives a script name from a path: `Order_To_Warehouse.py` becomes
/// `order-to-warehouse`.
fn default_name(path: &Path) -> String {
    let file_name = path
        .canonicalize()
        .ok()
        .and_then(|path| path.file_name().map(|name| name.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let stem = ["tar.gz", "tgz", "tar", "zip"]
        .iter()
        .find_map(|extension| file_name.strip_suffix(&format!(".{extension}")))
        .map(str::to_string)
        .unwrap_or_else(|| {
            Path::new(&file_name).file_stem().unwrap_or_default().to_string_lossy().into_owned()
        });
    let mut name: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    name.trim_matches('-').to_string()
}

fn archive_content_type(file_name: &str) -> Option<&'static str> {
    if file_name.ends_with(".tar.gz") || file_name.ends_with(".tgz") {
        Some("application/gzip")
    } else if file_name.ends_with(".tar") {
        Some("application/x-tar")
    } else if file_name.ends_with(".zip") {
        Some("application/zip")
    } else {
        None
    }
}

/// Packs a folder into a temporary tar file, which the upload then streams.
fn pack_folder(folder: &Path) -> anyhow::Result<std::fs::File> {
    let file = tempfile::tempfile().context("creating a temporary file for the archive")?;
    let mut builder = tar::Builder::new(file);
    builder.follow_symlinks(false);
    append_folder(&mut builder, folder, Path::new(""))?;
    let mut file = builder.into_inner().context("finishing the archive")?;
    use std::io::Seek;
    file.rewind().context("rewinding the archive")?;
    Ok(file)
}

fn append_folder(builder: &mut tar::Builder<std::fs::File>, folder: &Path, prefix: &Path) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(folder)
        .with_context(|| format!("reading {}", folder.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", folder.display()))?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let name = entry.file_name();
        let path = entry.path();
        let archive_path = prefix.join(&name);
        let file_type = entry.file_type().with_context(|| format!("reading {}", path.display()))?;
        if file_type.is_dir() {
            if SKIPPED_FOLDERS.iter().any(|skipped| name == *skipped) {
                continue;
            }
            append_folder(builder, &path, &archive_path)?;
        } else {
            builder
                .append_path_with_name(&path, &archive_path)
                .with_context(|| format!("adding {} to the archive", path.display()))?;
        }
    }
    Ok(())
}

fn encode_query_value(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

fn short_key(key: &str) -> &str {
    &key[..key.len().min(12)]
}

fn format_time(ms: &Value) -> String {
    match ms.as_u64() {
        Some(ms) => humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string(),
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_name_is_a_valid_script_name() {
        assert_eq!(default_name(Path::new("/nonexistent/Order_To_Warehouse.py")), "");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("Order_To_Warehouse.py");
        std::fs::write(&file, "").unwrap();
        assert_eq!(default_name(&file), "order-to-warehouse");
        let archive = dir.path().join("csv__to json.tar.gz");
        std::fs::write(&archive, "").unwrap();
        assert_eq!(default_name(&archive), "csv-to-json");
    }
}
