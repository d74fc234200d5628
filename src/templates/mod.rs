//! Language templates. A template is data: a folder with `template.toml`
//! (name, version, file extensions, entry file, dependency file, interpreter,
//! run arguments) and a shim that speaks the instance protocol. The built-in
//! templates are compiled into the binary; `--templates DIR` adds or
//! overrides them from folders on disk.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The built-in templates: (folder name, template.toml, shim file name, shim).
const BUILT_IN: &[(&str, &str, &str, &str)] = &[
    (
        "python",
        include_str!("../../templates/python/template.toml"),
        "shim.py",
        include_str!("../../templates/python/shim.py"),
    ),
    (
        "node",
        include_str!("../../templates/node/template.toml"),
        "shim.js",
        include_str!("../../templates/node/shim.js"),
    ),
    (
        "php",
        include_str!("../../templates/php/template.toml"),
        "shim.php",
        include_str!("../../templates/php/shim.php"),
    ),
    (
        "ruby",
        include_str!("../../templates/ruby/template.toml"),
        "shim.rb",
        include_str!("../../templates/ruby/shim.rb"),
    ),
    (
        "go",
        include_str!("../../templates/go/template.toml"),
        "kubefaas_shim.go",
        include_str!("../../templates/go/kubefaas_shim.go"),
    ),
];

/// The contents of `template.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    pub name: String,
    pub version: String,
    /// File extensions (without the dot) that select this template for a
    /// single uploaded file.
    pub extensions: Vec<String>,
    /// The file the shim loads, relative to the script's folder.
    pub entry: String,
    /// The shim's file name inside the template folder.
    pub shim: String,
    pub interpreter: InterpreterSpec,
    pub dependencies: Option<DependencySpec>,
    /// Build steps for the code layer, for compiled languages.
    pub code: Option<CodeSpec>,
    pub run: RunSpec,
    /// Whether the shim can start without a script and load one later,
    /// which prewarmed instances need.
    #[serde(default)]
    pub prewarm: bool,
}

/// The build of the dependency layer. The layer's key is a hash of the
/// template and the bytes of `file` and `lock_files`, so scripts with the
/// same dependency files share one layer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependencySpec {
    /// The dependency file; without it in the upload, no layer is built.
    pub file: String,
    /// Files that pin versions, used when present.
    #[serde(default)]
    pub lock_files: Vec<String>,
    /// Commands run in order inside the empty layer folder, which contains
    /// copies of the dependency files. `{interpreter}` becomes the resolved
    /// interpreter.
    pub steps: Vec<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterpreterSpec {
    pub command: String,
    /// Arguments that make `command` print the path of the real executable,
    /// so wrappers such as pyenv's shims are started once, not per instance.
    /// Further lines of its output name folders the interpreter reads at run
    /// time, such as its installation prefix; instances may read them.
    #[serde(default)]
    pub resolve: Vec<String>,
}

/// The build of the code layer, for uploaded files that are not run as they are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeSpec {
    /// Commands run in order inside the code layer folder, which contains the
    /// uploaded files and a copy of the shim. `{interpreter}` becomes the
    /// resolved interpreter (the compiler, for a compiled language).
    pub steps: Vec<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// The program to start instead of the interpreter, such as a binary
    /// the code steps built; `{code}` becomes the code folder.
    pub program: Option<String>,
    /// Arguments after the interpreter; `{shim}` becomes the shim's path.
    pub args: Vec<String>,
    /// Environment of every instance; `{dependencies}` becomes the folder of
    /// the dependency layer (an empty folder when there is none).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// A template ready to run: its spec, its shim on disk, and the resolved
/// interpreter.
#[derive(Debug, Clone)]
pub struct Template {
    pub spec: TemplateSpec,
    pub shim_path: PathBuf,
    pub interpreter: PathBuf,
    /// The interpreter's folder and the folders it named when resolved.
    pub interpreter_paths: Vec<PathBuf>,
    /// Hash of the template's description and shim; part of every build key,
    /// so changing a template never serves an artifact built with the old one.
    pub digest: String,
}

impl Template {
    /// Replaces `{interpreter}` in a build step with the resolved interpreter.
    pub fn step_command(&self, step: &[String]) -> Vec<String> {
        let interpreter = self.interpreter.to_string_lossy();
        step.iter().map(|part| part.replace("{interpreter}", &interpreter)).collect()
    }
}

pub struct Templates {
    by_name: HashMap<String, Template>,
}

impl Templates {
    /// Loads the built-in templates and then those in `extra_dir`, writing
    /// each shim under `install_dir` and resolving each interpreter once.
    /// A template whose interpreter is missing is left out with a warning,
    /// so a host without Node still serves Python scripts.
    pub fn load(install_dir: &Path, extra_dir: Option<&Path>) -> anyhow::Result<Templates> {
        let mut sources: BTreeMap<String, (String, Vec<(String, Vec<u8>)>)> = BTreeMap::new();
        for (folder, description, shim_name, shim) in BUILT_IN {
            let files = vec![(shim_name.to_string(), shim.as_bytes().to_vec())];
            sources.insert(folder.to_string(), (description.to_string(), files));
        }
        if let Some(dir) = extra_dir {
            for (folder, source) in read_template_dir(dir)? {
                sources.insert(folder, source);
            }
        }

        let mut by_name = HashMap::new();
        for (folder, (description, files)) in sources {
            let spec: TemplateSpec = toml::from_str(&description)
                .with_context(|| format!("template {folder:?}: invalid template.toml"))?;
            let Some((_, shim)) = files.iter().find(|(name, _)| *name == spec.shim) else {
                bail!("template {folder:?}: shim file {:?} is missing", spec.shim);
            };
            let digest = digest_template(&description, &files);
            let dir = install_dir.join(format!("{}-{}", spec.name, &digest[..16]));
            let shim_path = dir.join(&spec.shim);
            if !shim_path.exists() {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating template folder {}", dir.display()))?;
                let partial = dir.join(format!(".{}.partial", spec.shim));
                std::fs::write(&partial, shim)
                    .with_context(|| format!("writing {}", partial.display()))?;
                std::fs::rename(&partial, &shim_path)
                    .with_context(|| format!("renaming {}", partial.display()))?;
            }
            match resolve_interpreter(&spec.interpreter) {
                Ok((interpreter, interpreter_paths)) => {
                    tracing::info!(template = %spec.name, interpreter = %interpreter.display(), "template ready");
                    let template = Template { spec, shim_path, interpreter, interpreter_paths, digest };
                    by_name.insert(template.spec.name.clone(), template);
                }
                Err(error) => tracing::warn!(
                    template = %spec.name,
                    error = format!("{error:#}"),
                    "template unavailable: its interpreter could not be started"
                ),
            }
        }
        Ok(Templates { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Template> {
        self.by_name.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Template> {
        self.by_name.values()
    }

    /// Picks the template for a single uploaded file by its extension.
    pub fn for_extension(&self, extension: &str) -> Option<&Template> {
        let mut matches: Vec<&Template> = self
            .by_name
            .values()
            .filter(|template| template.spec.extensions.iter().any(|known| known == extension))
            .collect();
        matches.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        matches.first().copied()
    }

    /// Picks the template whose entry file exists in an uploaded folder.
    pub fn for_folder(&self, folder: &Path) -> Option<&Template> {
        let mut matches: Vec<&Template> = self
            .by_name
            .values()
            .filter(|template| folder.join(&template.spec.entry).is_file())
            .collect();
        matches.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        matches.first().copied()
    }
}

/// Reads every `DIR/*/template.toml` with the other files of its folder.
fn read_template_dir(dir: &Path) -> anyhow::Result<Vec<(String, (String, Vec<(String, Vec<u8>)>))>> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading templates folder {}", dir.display()))?;
    for entry in entries {
        let folder = entry.with_context(|| format!("reading templates folder {}", dir.display()))?.path();
        let description_path = folder.join("template.toml");
        if !description_path.is_file() {
            continue;
        }
        let description = std::fs::read_to_string(&description_path)
            .with_context(|| format!("reading {}", description_path.display()))?;
        let mut files = Vec::new();
        for file in std::fs::read_dir(&folder).with_context(|| format!("reading {}", folder.display()))? {
            let path = file.with_context(|| format!("reading {}", folder.display()))?.path();
            if path.is_file() && path != description_path {
                let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                files.push((path.file_name().unwrap_or_default().to_string_lossy().into_owned(), bytes));
            }
        }
        files.sort();
        let name = folder.file_name().unwrap_or_default().to_string_lossy().into_owned();
        found.push((name, (description, files)));
    }
    Ok(found)
}

fn digest_template(description: &str, files: &[(String, Vec<u8>)]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(description.as_bytes());
    for (name, bytes) in files {
        hasher.update((name.len() as u64).to_be_bytes());
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    }
    hex::encode(hasher.finalize())
}

/// Returns the interpreter's executable and the folders it reads: the
/// executable's own folder and the further lines `resolve` printed.
fn resolve_interpreter(spec: &InterpreterSpec) -> anyhow::Result<(PathBuf, Vec<PathBuf>)> {
    if spec.resolve.is_empty() {
        return Ok((PathBuf::from(&spec.command), Vec::new()));
    }
    let output = Command::new(&spec.command)
        .args(&spec.resolve)
        .output()
        .with_context(|| format!("starting {:?}", spec.command))?;
    if !output.status.success() {
        bail!(
            "{:?} exited with {}: {}",
            spec.command,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines = stdout.lines().map(str::trim).filter(|line| !line.is_empty());
    let named = PathBuf::from(lines.next().unwrap_or_default());
    if !named.is_file() {
        bail!("{:?} named {} as its executable, which is not a file", spec.command, named.display());
    }
    // The real file, so that links leading outside the folders bound into
    // the sandbox do not matter.
    let executable = named.canonicalize().with_context(|| format!("resolving {}", named.display()))?;
    let mut folders: Vec<PathBuf> = executable.parent().map(PathBuf::from).into_iter().collect();
    for line in lines {
        let folder = Path::new(line)
            .canonicalize()
            .with_context(|| format!("{:?} named the folder {line}, which cannot be resolved", spec.command))?;
        folders.push(folder);
    }
    // A folder inside another is bound with it.
    let all = folders.clone();
    folders.retain(|folder| !all.iter().any(|other| other != folder && folder.starts_with(other)));
    folders.sort();
    folders.dedup();
    Ok((executable, folders))
}
