//! Safe unpacking of tar, tar.gz and zip archives. An entry whose path is
//! absolute or climbs out with `..`, a link that points outside the
//! folder, a device or FIFO entry, and an archive that expands past the
//! size limit are all rejected with `invalid_request`.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    Tar,
    TarGz,
    Zip,
}

impl ArchiveFormat {
    /// Picks the format from a Content-Type header value.
    pub fn from_content_type(content_type: &str) -> Option<ArchiveFormat> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/x-tar" | "application/tar" => Some(ArchiveFormat::Tar),
            "application/gzip" | "application/x-gzip" | "application/x-tar+gzip" => Some(ArchiveFormat::TarGz),
            "application/zip" | "application/x-zip-compressed" | "application/x-zip" => Some(ArchiveFormat::Zip),
            _ => None,
        }
    }
}

pub fn unpack_archive(format: ArchiveFormat, archive: &Path, tree: &Path, max_bytes: u64) -> Result<(), ApiError> {
    let file = File::open(archive)
        .map_err(|error| ApiError::internal(anyhow::anyhow!("opening {}: {error}", archive.display())))?;
    let reader: Box<dyn Read> = match format {
        ArchiveFormat::Tar => Box::new(BufReader::new(file)),
        ArchiveFormat::TarGz => Box::new(flate2::read::GzDecoder::new(BufReader::new(file))),
        ArchiveFormat::Zip => return unpack_zip(file, tree, max_bytes),
    };
    unpack_tar(reader, tree, max_bytes)
}

fn outside_error(path: &Path, what: &str) -> ApiError {
    ApiError::invalid(format!(
        "invalid archive: {what} {:?} points outside the script's folder",
        path.display().to_string()
    ))
}

fn expansion_error(max_bytes: u64) -> ApiError {
    ApiError::invalid(format!("invalid archive: it expands past the script size limit of {max_bytes} bytes"))
}

/// Checks a link found at `relative` that points to `link`, and creates it.
fn create_link(tree: &Path, relative: &Path, link: &Path, entry: &Path) -> Result<(), ApiError> {
    let resolved = relative.parent().unwrap_or(Path::new("")).join(link);
    if link.is_absolute() || contained_path(&resolved).is_none() {
        return Err(outside_error(entry, "link"));
    }
    let target = tree.join(relative);
    if let Some(parent) = target.parent() {
        create_dir(parent)?;
    }
    std::os::unix::fs::symlink(link, &target)
        .map_err(|error| ApiError::invalid(format!("invalid archive: link {}: {error}", entry.display())))
}

/// Unpacks a zip archive. Its entry sizes are not trusted: bytes are
/// counted as they are written.
fn unpack_zip(file: File, tree: &Path, max_bytes: u64) -> Result<(), ApiError> {
    let bad_archive = |error: zip::result::ZipError| ApiError::invalid(format!("invalid archive: {error}"));
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(bad_archive)?;
    let mut unpacked: u64 = 0;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(bad_archive)?;
        let path = PathBuf::from(entry.name().map_err(bad_archive)?.into_owned());
        let Some(relative) = contained_path(&path) else {
            return Err(outside_error(&path, "entry"));
        };
        if relative.as_os_str().is_empty() {
            continue;
        }
        if entry.encrypted() {
            return Err(ApiError::invalid(format!(
                "invalid archive: entry {:?} is encrypted; upload an archive without a password",
                path.display().to_string()
            )));
        }
        let target = tree.join(&relative);
        if entry.is_dir() {
            create_dir(&target)?;
        } else if entry.is_symlink() {
            // A link's target is its contents; no path is longer than PATH_MAX.
            let mut link = Vec::new();
            (&mut entry).take(4096).read_to_end(&mut link).map_err(|error| ApiError::invalid(format!("invalid archive: {error}")))?;
            let link = PathBuf::from(String::from_utf8_lossy(&link).into_owned());
            create_link(tree, &relative, &link, &path)?;
        } else {
            if let Some(parent) = target.parent() {
                create_dir(parent)?;
            }
            ensure_inside(tree, target.parent().unwrap_or(tree), &path)?;
            let mode = entry.unix_mode().unwrap_or(0o644);
            unpacked += write_entry(&mut entry, &target, mode, max_bytes - unpacked)?;
            if unpacked > max_bytes {
                return Err(expansion_error(max_bytes));
            }
        }
    }
    check_links(tree, tree)
}

fn unpack_tar(reader: impl Read, tree: &Path, max_bytes: u64) -> Result<(), ApiError> {
    let bad_archive = |error: std::io::Error| ApiError::invalid(format!("invalid archive: {error}"));
    let mut archive = tar::Archive::new(reader);
    let mut unpacked: u64 = 0;
    for entry in archive.entries().map_err(bad_archive)? {
        let mut entry = entry.map_err(bad_archive)?;
        let path = entry.path().map_err(bad_archive)?.into_owned();
        let Some(relative) = contained_path(&path) else {
            return Err(outside_error(&path, "entry"));
        };
        if relative.as_os_str().is_empty() {
            continue;
        }
        let target = tree.join(&relative);
        let entry_type = entry.header().entry_type();
        match entry_type {
            tar::EntryType::Directory => create_dir(&target)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                // The header's size is known before any byte is written.
                if entry.size() > max_bytes - unpacked {
                    return Err(expansion_error(max_bytes));
                }
                if let Some(parent) = target.parent() {
                    create_dir(parent)?;
                }
                ensure_inside(tree, target.parent().unwrap_or(tree), &path)?;
                let mode = entry.header().mode().unwrap_or(0o644);
                unpacked += write_entry(&mut entry, &target, mode, max_bytes - unpacked)?;
                if unpacked > max_bytes {
                    return Err(expansion_error(max_bytes));
                }
            }
            tar::EntryType::Symlink => {
                let link = entry.link_name().map_err(bad_archive)?.unwrap_or_default().into_owned();
                create_link(tree, &relative, &link, &path)?;
            }
            // pax and GNU extension headers carry metadata for the next entry.
            tar::EntryType::XHeader | tar::EntryType::XGlobalHeader | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => {
                return Err(ApiError::invalid(format!(
                    "invalid archive: entry {:?} has unsupported type {other:?}; only files, folders and links inside the folder are allowed",
                    path.display().to_string()
                )));
            }
        }
    }
    check_links(tree, tree)
}

/// Checks that `dir`, with every link on the way resolved, is inside `tree`.
/// Links are checked one by one as they are unpacked, but a chain of links
/// (`a -> b/..` with `b -> .`) can still climb out, so the real path decides.
fn ensure_inside(tree: &Path, dir: &Path, entry: &Path) -> Result<(), ApiError> {
    let escapes = || {
        ApiError::invalid(format!(
            "invalid archive: entry {:?} points outside the script's folder",
            entry.display().to_string()
        ))
    };
    let root = tree.canonicalize().map_err(|error| ApiError::internal(anyhow::anyhow!("resolving {}: {error}", tree.display())))?;
    let real = dir.canonicalize().map_err(|_| escapes())?;
    if real.starts_with(&root) { Ok(()) } else { Err(escapes()) }
}

/// Checks every link left in the unpacked folder resolves inside it.
fn check_links(tree: &Path, dir: &Path) -> Result<(), ApiError> {
    let read_failed = |error: std::io::Error| ApiError::internal(anyhow::anyhow!("reading {}: {error}", dir.display()));
    for entry in std::fs::read_dir(dir).map_err(read_failed)? {
        let entry = entry.map_err(read_failed)?;
        let file_type = entry.file_type().map_err(read_failed)?;
        let path = entry.path();
        let relative = path.strip_prefix(tree).unwrap_or(&path).to_path_buf();
        if file_type.is_symlink() {
            ensure_inside(tree, &path, &relative)?;
        } else if file_type.is_dir() {
            check_links(tree, &path)?;
        }
    }
    Ok(())
}

/// Returns the path with `.` removed if it stays inside the folder, or None
/// if it is absolute or climbs out with `..`.
fn contained_path(path: &Path) -> Option<PathBuf> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !clean.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(clean)
}

fn create_dir(path: &Path) -> Result<(), ApiError> {
    std::fs::create_dir_all(path)
        .map_err(|error| ApiError::invalid(format!("invalid archive: cannot create folder {}: {error}", path.display())))
}

/// Writes one file and returns its size, reading at most `limit + 1`
/// bytes, so a returned size above `limit` means the entry is larger.
fn write_entry(entry: &mut impl Read, target: &Path, mode: u32, limit: u64) -> Result<u64, ApiError> {
    use std::os::unix::fs::OpenOptionsExt;
    // A file replaced by a later entry of the same name, or a link planted
    // earlier, must not be written through: remove whatever is there first.
    let _ = std::fs::remove_file(target);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if mode & 0o111 != 0 { 0o755 } else { 0o644 })
        .open(target)
        .map_err(|error| ApiError::invalid(format!("invalid archive: cannot write {}: {error}", target.display())))?;
    let written = std::io::copy(&mut entry.take(limit.saturating_add(1)), &mut file)
        .map_err(|error| ApiError::invalid(format!("invalid archive: cannot write {}: {error}", target.display())))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contained_path_rejects_escapes() {
        assert_eq!(contained_path(Path::new("a/./b")), Some(PathBuf::from("a/b")));
        assert_eq!(contained_path(Path::new("a/../b")), Some(PathBuf::from("b")));
        assert_eq!(contained_path(Path::new("../b")), None);
        assert_eq!(contained_path(Path::new("a/../../b")), None);
        assert_eq!(contained_path(Path::new("/etc/passwd")), None);
    }
}
