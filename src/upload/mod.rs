//! Receiving a script upload: the body streams to a file on disk (never held
//! in memory) within the size limit, then is unpacked into a folder whose
//! entries cannot escape it, and the folder gets a content hash.

pub mod unpack;

use std::io::Read;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{ApiError, ErrorKind};

pub use unpack::ArchiveFormat;

/// The kind of request body: one file with its name, or an archive.
#[derive(Debug, Clone)]
pub enum UploadKind {
    File { file_name: String },
    Archive(ArchiveFormat),
}

/// Streams `body` into `path`, failing with `too_large` as soon as more than
/// `max_bytes` have arrived. Returns the number of bytes written. The caller
/// removes `path` on error.
pub async fn receive_body(body: axum::body::Body, path: &Path, max_bytes: u64) -> Result<u64, ApiError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|error| ApiError::internal(anyhow::anyhow!("creating {}: {error}", path.display())))?;
    let mut stream = body.into_data_stream();
    let mut received: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| ApiError::invalid(format!("reading the upload failed: {error}")))?;
        received += chunk.len() as u64;
        if received > max_bytes {
            return Err(too_large_script(max_bytes));
        }
        file.write_all(&chunk)
            .await
            .map_err(|error| ApiError::internal(anyhow::anyhow!("writing {}: {error}", path.display())))?;
    }
    file.flush()
        .await
        .map_err(|error| ApiError::internal(anyhow::anyhow!("writing {}: {error}", path.display())))?;
    Ok(received)
}

pub fn too_large_script(max_bytes: u64) -> ApiError {
    ApiError::new(
        ErrorKind::TooLarge,
        format!("the script is larger than the limit of {max_bytes} bytes"),
    )
    .with("limit_bytes", max_bytes)
}

/// Turns the received file into a folder at `tree`: a single file is moved
/// in under its own name, an archive is unpacked safely.
pub fn unpack_upload(kind: &UploadKind, received: &Path, tree: &Path, max_bytes: u64) -> Result<(), ApiError> {
    std::fs::create_dir_all(tree)
        .map_err(|error| ApiError::internal(anyhow::anyhow!("creating {}: {error}", tree.display())))?;
    match kind {
        UploadKind::File { file_name } => {
            validate_file_name(file_name)?;
            let target = tree.join(file_name);
            std::fs::rename(received, &target)
                .map_err(|error| ApiError::internal(anyhow::anyhow!("moving upload to {}: {error}", target.display())))
        }
        UploadKind::Archive(format) => unpack::unpack_archive(*format, received, tree, max_bytes),
    }
}

fn validate_file_name(name: &str) -> Result<(), ApiError> {
    let valid = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name.len() <= 255;
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("invalid file name {name:?}: give a plain file name such as handler.py")))
    }
}

/// Hashes a folder: every regular file's relative path, executable bit and
/// contents, and every symbolic link's target, in sorted order. Two uploads
/// with the same tree get the same hash whatever their archive format.
pub fn hash_tree(root: &Path) -> std::io::Result<(String, u64)> {
    let mut entries = Vec::new();
    collect_entries(root, PathBuf::new(), &mut entries)?;
    entries.sort();
    let mut hasher = Sha256::new();
    let mut total = 0;
    for relative in entries {
        let path = root.join(&relative);
        let metadata = std::fs::symlink_metadata(&path)?;
        let name = relative.to_string_lossy();
        hasher.update((name.len() as u64).to_be_bytes());
        hasher.update(name.as_bytes());
        if metadata.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?;
            hasher.update(b"l");
            hasher.update(target.to_string_lossy().as_bytes());
            continue;
        }
        use std::os::unix::fs::PermissionsExt;
        let executable = metadata.permissions().mode() & 0o111 != 0;
        hasher.update(if executable { b"x" } else { b"f" });
        hasher.update(metadata.len().to_be_bytes());
        let mut file = std::fs::File::open(&path)?;
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        total += metadata.len();
    }
    Ok((hex::encode(hasher.finalize()), total))
}

fn collect_entries(root: &Path, relative: PathBuf, entries: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root.join(&relative))? {
        let entry = entry?;
        let child = relative.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            collect_entries(root, child, entries)?;
        } else {
            entries.push(child);
        }
    }
    Ok(())
}
