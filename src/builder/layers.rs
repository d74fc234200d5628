//! Packing a folder into a layer tar and unpacking it again. Layers are
//! written only by the builder, so unpacking trusts their paths; the tar
//! crate still rejects entries with `..`.

use std::path::Path;

pub fn pack(folder: &Path, tar_path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(tar_path)?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.append_dir_all(".", folder)?;
    builder.into_inner()?.into_inner().map_err(|error| error.into_error())?.sync_all()
}

pub fn unpack(tar_path: &Path, folder: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(tar_path)?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    archive.set_preserve_permissions(true);
    std::fs::create_dir_all(folder)?;
    archive.unpack(folder)
}

/// Copies a folder, hard-linking files where the filesystem allows it.
/// Returns the number of files.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<u64> {
    std::fs::create_dir_all(to)?;
    let mut count = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            count += copy_tree(&source, &target)?;
        } else if file_type.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
        } else {
            if std::fs::hard_link(&source, &target).is_err() {
                std::fs::copy(&source, &target)?;
            }
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_then_unpack_keeps_files_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::create_dir_all(source.join("lib/pkg")).unwrap();
        std::fs::write(source.join("lib/pkg/module.py"), "x = 1\n").unwrap();
        std::fs::write(source.join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(source.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("lib/pkg", source.join("pkg")).unwrap();

        let tar_path = dir.path().join("layer.tar");
        pack(&source, &tar_path).unwrap();
        let target = dir.path().join("target");
        unpack(&tar_path, &target).unwrap();

        assert_eq!(std::fs::read_to_string(target.join("lib/pkg/module.py")).unwrap(), "x = 1\n");
        assert_eq!(std::fs::read_to_string(target.join("pkg/module.py")).unwrap(), "x = 1\n");
        let mode = std::fs::metadata(target.join("run.sh")).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "the executable bit survives");
    }
}
