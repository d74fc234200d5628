//! End-to-end tests of script uploads: size limits on generated streams and
//! safe unpacking of zip archives.

mod common;

use std::io::{Read, Write};

use common::{Server, peak_memory_bytes};
use serde_json::json;
use zip::write::SimpleFileOptions;

const HANDLER: &str = "def handle(data):\n    data['payload'] = 'from zip'\n    return data\n";

/// A request body of `remaining` bytes made up on the fly, sent with
/// chunked transfer encoding since its length is not given.
struct GeneratedBody {
    remaining: u64,
}

impl Read for GeneratedBody {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let count = buffer.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        buffer[..count].fill(b'#');
        self.remaining -= count as u64;
        Ok(count)
    }
}

#[test]
fn upload_over_4_gib_too_large() {
    let server = Server::start();
    let limit: u64 = 4 * 1024 * 1024 * 1024;
    let memory_before = peak_memory_bytes(server.pid());

    let body = reqwest::blocking::Body::new(GeneratedBody { remaining: limit + 1 });
    let response = server
        .http()
        .put(format!("{}/v1/scripts/huge?filename=handler.py", server.url))
        .body(body)
        .send()
        .expect("sending the upload");
    assert_eq!(response.status().as_u16(), 413);
    let body: serde_json::Value = response.json().unwrap();
    assert_eq!(body["error"]["kind"], "too_large");
    assert_eq!(body["error"]["message"], "the script is larger than the limit of 4294967296 bytes");
    assert_eq!(body["error"]["limit_bytes"], limit);

    let growth = peak_memory_bytes(server.pid()).saturating_sub(memory_before);
    assert!(growth <= 64 * 1024 * 1024, "the server's peak memory grew by {growth} bytes during a 4 GiB upload");
    assert_eq!(server.request("GET", "/v1/scripts/huge", None).0, 404, "nothing was deployed");
    let leftover: Vec<_> = std::fs::read_dir(server.data_dir.join("tmp")).unwrap().flatten().map(|entry| entry.path()).collect();
    assert!(leftover.is_empty(), "the partial upload is removed: {leftover:?}");
    assert_eq!(std::fs::read_dir(server.data_dir.join("sources")).unwrap().count(), 0, "no source is stored");
}

/// Builds a zip archive; `add` writes its entries.
fn zip_of(add: impl FnOnce(&mut zip::ZipWriter<std::io::Cursor<Vec<u8>>>)) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    add(&mut writer);
    writer.finish().expect("finishing the zip").into_inner()
}

fn add_file(writer: &mut zip::ZipWriter<std::io::Cursor<Vec<u8>>>, name: &str, contents: &[u8]) {
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    writer.start_file(name, options).expect("starting a zip entry");
    writer.write_all(contents).expect("writing a zip entry");
}

#[test]
fn zip_archive_deploys_and_runs() {
    let server = Server::start();
    let archive = zip_of(|writer| {
        add_file(writer, "handler.py", HANDLER.as_bytes());
        writer.add_directory("lib/", SimpleFileOptions::default()).unwrap();
        add_file(writer, "lib/data.txt", b"data");
        writer.add_symlink("data-link", "lib/data.txt", SimpleFileOptions::default()).unwrap();
    });
    let (status, body) = server.deploy_archive("zipped", "application/zip", archive, &[]);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["template"], "python");
    let (status, body) = server.invoke("zipped", json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"], "from zip");

    // The CLI sends a .zip file as an archive.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cli-zipped.zip");
    std::fs::write(&path, zip_of(|writer| add_file(writer, "handler.py", HANDLER.as_bytes()))).unwrap();
    let output = server.cli_ok(&["deploy", path.to_str().unwrap()]);
    assert!(output.starts_with("deployed cli-zipped version 1 (template python)"), "{output}");
}

#[test]
fn unsafe_zip_archives_are_invalid() {
    let server = Server::builder().config("max_script_bytes = 4096\n").start();
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "parent entry",
            zip_of(|writer| add_file(writer, "../handler.py", HANDLER.as_bytes())),
            "invalid archive: entry \"../handler.py\" points outside the script's folder".into(),
        ),
        (
            "absolute entry",
            zip_of(|writer| add_file(writer, "/etc/handler.py", HANDLER.as_bytes())),
            "invalid archive: entry \"/etc/handler.py\" points outside the script's folder".into(),
        ),
        (
            "link outside",
            zip_of(|writer| {
                add_file(writer, "handler.py", HANDLER.as_bytes());
                writer.add_symlink("escape", "../../etc", SimpleFileOptions::default()).unwrap();
            }),
            "invalid archive: link \"escape\" points outside the script's folder".into(),
        ),
        (
            "absolute link",
            zip_of(|writer| writer.add_symlink("shadow", "/etc/shadow", SimpleFileOptions::default()).unwrap()),
            "invalid archive: link \"shadow\" points outside the script's folder".into(),
        ),
        (
            "expansion past the limit",
            // 1 MiB of zeros compresses to about 1 KiB, under the 4096-byte
            // upload limit, and expands far past it.
            zip_of(|writer| add_file(writer, "zeros.bin", &vec![0u8; 1024 * 1024])),
            "invalid archive: it expands past the script size limit of 4096 bytes".into(),
        ),
        ("not a zip", b"PK\x03\x04 this is not really a zip".to_vec(), "invalid archive: ".into()),
    ];
    for (case, archive, message) in cases {
        assert!(archive.len() <= 4096, "{case}: the upload itself fits the limit");
        let (status, body) = server.deploy_archive("unsafe", "application/zip", archive, &[]);
        assert_eq!(status, 400, "{case}: {body}");
        assert_eq!(body["error"]["kind"], "invalid_request", "{case}");
        assert!(body["error"]["message"].as_str().unwrap().starts_with(&message), "{case}: {body}");
        assert_eq!(server.request("GET", "/v1/scripts/unsafe", None).0, 404, "{case}: nothing was deployed");
    }
    let leftover: Vec<_> = std::fs::read_dir(server.data_dir.join("tmp")).unwrap().flatten().map(|entry| entry.path()).collect();
    assert!(leftover.is_empty(), "no unpacked file is left behind: {leftover:?}");
}

#[test]
fn tar_expansion_past_limit_is_invalid() {
    let server = Server::builder().config("max_script_bytes = 4096\n").start();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&common::tar_of(&[("handler.py", HANDLER), ("zeros.txt", &"0".repeat(1024 * 1024))])).unwrap();
    let archive = encoder.finish().unwrap();
    assert!(archive.len() <= 4096, "the compressed upload fits the limit");
    let (status, body) = server.deploy_archive("gz-bomb", "application/gzip", archive, &[]);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["kind"], "invalid_request");
    assert_eq!(body["error"]["message"], "invalid archive: it expands past the script size limit of 4096 bytes");
}
