//! Metadata that must survive a restart: scripts, their immutable versions,
//! and build records. Embedded mode keeps it in one redb file under the data
//! dir; values are JSON so records can grow fields without a migration.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

const SCRIPTS: TableDefinition<&str, &[u8]> = TableDefinition::new("scripts");
/// Keyed by `name/version` with the version zero-padded, so one script's
/// versions sort together and in order.
const VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("versions");
const BUILDS: TableDefinition<&str, &[u8]> = TableDefinition::new("builds");
/// When each artifact-store object was last used, in ms since the epoch.
const USES: TableDefinition<&str, u64> = TableDefinition::new("uses");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata database failed: {0}")]
    Database(#[from] redb::Error),
    #[error("metadata record is not valid JSON: {0}")]
    Decode(#[from] serde_json::Error),
}

macro_rules! database_error {
    ($($source:ty),*) => {$(
        impl From<$source> for StoreError {
            fn from(error: $source) -> Self {
                StoreError::Database(error.into())
            }
        }
    )*};
}
database_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// One deployed version of a script: what the upload contained and how it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScriptVersion {
    pub name: String,
    pub version: u64,
    pub template: String,
    pub entry: String,
    /// Content hash of the uploaded file tree.
    pub source_hash: String,
    pub source_bytes: u64,
    pub build_key: String,
    pub created_at_ms: u64,
    /// Limits, network access and environment from the script's kubefaas.toml.
    #[serde(default)]
    pub settings: RunSettings,
    #[serde(default)]
    pub secrets: Secrets,
}

/// Run settings of a script's instances, from its kubefaas.toml. A field
/// left out takes the server's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// Memory per instance, in MiB.
    pub memory_mib: Option<u64>,
    /// The time a call may take, in seconds.
    pub timeout_seconds: Option<f64>,
    /// CPU weight per instance: 1 to 10000, 100 is the default.
    pub cpu_weight: Option<u64>,
    /// Whether instances may open network connections; on unless set false.
    pub network: Option<bool>,
    /// Environment variables given to every instance.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Secret environment variables, by name. Debug output lists the names
/// only, so a secret value never reaches a log through `{:?}`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secrets(pub BTreeMap<String, String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_set().entries(self.0.keys()).finish()
    }
}

impl Secrets {
    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    /// Replaces every secret value in `text` with `***`. Longer values are
    /// replaced first, so a value that contains another is masked whole.
    pub fn mask(&self, text: &str) -> String {
        let mut values: Vec<&str> = self.0.values().map(String::as_str).filter(|value| !value.is_empty()).collect();
        if values.is_empty() {
            return text.to_string();
        }
        values.sort_by_key(|value| std::cmp::Reverse(value.len()));
        let mut masked = text.to_string();
        for value in values {
            if masked.contains(value) {
                masked = masked.replace(value, "***");
            }
        }
        masked
    }

    /// Masks a line that was cut short: besides whole values, a value's
    /// beginning at the very end of the text is masked, since the rest of
    /// the value was cut off.
    pub fn mask_cut(&self, text: &str) -> String {
        let cut_value = self
            .0
            .values()
            .filter_map(|value| {
                (1..value.len()).rev().filter(|length| value.is_char_boundary(*length)).find(|length| text.ends_with(&value[..*length]))
            })
            .max();
        match cut_value {
            Some(length) => {
                let mut masked = self.mask(&text[..text.len() - length]);
                masked.push_str("***");
                masked
            }
            None => self.mask(text),
        }
    }
}

/// A script: its current version plus when it was first created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Script {
    pub current: ScriptVersion,
    pub created_at_ms: u64,
}

/// The outcome of one build, kept with its log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildRecord {
    pub key: String,
    pub template: String,
    pub succeeded: bool,
    pub log: String,
    pub finished_at_ms: u64,
    pub duration_ms: u64,
}

pub struct Store {
    db: Database,
}

impl Store {
    /// Opens the database file, creating it and its tables if needed.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(SCRIPTS)?;
        txn.open_table(VERSIONS)?;
        txn.open_table(BUILDS)?;
        txn.open_table(USES)?;
        txn.commit()?;
        Ok(Store { db })
    }

    pub fn script(&self, name: &str) -> Result<Option<Script>, StoreError> {
        self.get(SCRIPTS, name)
    }

    pub fn scripts(&self) -> Result<Vec<Script>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SCRIPTS)?;
        let mut scripts = Vec::new();
        for entry in table.iter()? {
            let (_, value) = entry?;
            scripts.push(serde_json::from_slice(value.value())?);
        }
        Ok(scripts)
    }

    /// Records `version` as the script's newest version and makes it current.
    /// The version number is assigned here, inside the write transaction, so
    /// two concurrent deploys of one name get distinct numbers.
    pub fn add_version(&self, mut version: ScriptVersion) -> Result<ScriptVersion, StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut scripts = txn.open_table(SCRIPTS)?;
            let previous: Option<Script> = match scripts.get(version.name.as_str())? {
                Some(value) => Some(serde_json::from_slice(value.value())?),
                None => None,
            };
            version.version = previous.as_ref().map_or(1, |script| script.current.version + 1);
            let script = Script {
                created_at_ms: previous.map_or(version.created_at_ms, |script| script.created_at_ms),
                current: version.clone(),
            };
            scripts.insert(version.name.as_str(), serde_json::to_vec(&script)?.as_slice())?;
            let mut versions = txn.open_table(VERSIONS)?;
            let key = version_key(&version.name, version.version);
            versions.insert(key.as_str(), serde_json::to_vec(&version)?.as_slice())?;
        }
        txn.commit()?;
        Ok(version)
    }

    pub fn versions(&self, name: &str) -> Result<Vec<ScriptVersion>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(VERSIONS)?;
        let (start, end) = (format!("{name}/"), format!("{name}0"));
        let mut versions = Vec::new();
        for entry in table.range(start.as_str()..end.as_str())? {
            let (_, value) = entry?;
            versions.push(serde_json::from_slice(value.value())?);
        }
        Ok(versions)
    }

    /// Returns the source hash of every stored version of every script.
    pub fn source_hashes(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(VERSIONS)?;
        let mut hashes = std::collections::HashSet::new();
        for entry in table.iter()? {
            let (_, value) = entry?;
            let version: ScriptVersion = serde_json::from_slice(value.value())?;
            hashes.insert(version.source_hash);
        }
        Ok(hashes)
    }

    /// Deletes a script and all its versions. Returns false if it did not exist.
    pub fn remove_script(&self, name: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let existed;
        {
            let mut scripts = txn.open_table(SCRIPTS)?;
            existed = scripts.remove(name)?.is_some();
            let mut versions = txn.open_table(VERSIONS)?;
            let (start, end) = (format!("{name}/"), format!("{name}0"));
            versions.retain_in(start.as_str()..end.as_str(), |_, _| false)?;
        }
        txn.commit()?;
        Ok(existed)
    }

    pub fn build(&self, key: &str) -> Result<Option<BuildRecord>, StoreError> {
        self.get(BUILDS, key)
    }

    pub fn put_build(&self, record: &BuildRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(BUILDS)?.insert(record.key.as_str(), serde_json::to_vec(record)?.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    pub fn record_uses(&self, keys: &[String], now_ms: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut uses = txn.open_table(USES)?;
            for key in keys {
                uses.insert(key.as_str(), now_ms)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Lists the keys last used before `cutoff_ms`.
    pub fn uses_before(&self, cutoff_ms: u64) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let uses = txn.open_table(USES)?;
        let mut keys = Vec::new();
        for entry in uses.iter()? {
            let (key, last_used) = entry?;
            if last_used.value() < cutoff_ms {
                keys.push(key.value().to_string());
            }
        }
        Ok(keys)
    }

    pub fn remove_use(&self, key: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(USES)?.remove(key)?;
        txn.commit()?;
        Ok(())
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table)?;
        match table.get(key)? {
            Some(value) => Ok(Some(serde_json::from_slice(value.value())?)),
            None => Ok(None),
        }
    }
}

/// Script names cannot contain `/`, and `0` sorts right after `/`, so the
/// range `name/`..`name0` covers exactly one script's versions.
fn version_key(name: &str, version: u64) -> String {
    format!("{name}/{version:020}")
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(name: &str, key: &str) -> ScriptVersion {
        ScriptVersion {
            name: name.into(),
            version: 0,
            template: "python".into(),
            entry: "handler.py".into(),
            source_hash: "s".into(),
            source_bytes: 1,
            build_key: key.into(),
            created_at_ms: 1,
            settings: RunSettings::default(),
            secrets: Secrets::default(),
        }
    }

    #[test]
    fn versions_number_up_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.add_version(version("a", "k1")).unwrap().version, 1);
            assert_eq!(store.add_version(version("a", "k2")).unwrap().version, 2);
            assert_eq!(store.add_version(version("a-b", "k3")).unwrap().version, 1);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.script("a").unwrap().unwrap().current.build_key, "k2");
        assert_eq!(store.versions("a").unwrap().len(), 2);
        assert_eq!(store.versions("a-b").unwrap().len(), 1);
    }

    #[test]
    fn secrets_are_masked_and_hidden_from_debug() {
        let secrets = Secrets(BTreeMap::from([
            ("TOKEN".to_string(), "s3cr3t-value".to_string()),
            ("SHORT".to_string(), "s3cr3t".to_string()),
        ]));
        assert_eq!(format!("{secrets:?}"), "{\"SHORT\", \"TOKEN\"}");
        assert_eq!(secrets.mask("token=s3cr3t-value and s3cr3t"), "token=*** and ***");
        assert_eq!(secrets.mask_cut("cut here: s3cr3t-va"), "cut here: ***");
        assert_eq!(secrets.mask_cut("nothing to hide"), "nothing to hide");
    }

    #[test]
    fn versions_without_settings_still_load() {
        let stored = r#"{"name":"a","version":1,"template":"python","entry":"handler.py","source_hash":"s","source_bytes":1,"build_key":"k","created_at_ms":1}"#;
        let version: ScriptVersion = serde_json::from_str(stored).unwrap();
        assert_eq!(version.settings, RunSettings::default());
        assert!(version.secrets.0.is_empty());
    }

    #[test]
    fn remove_script_drops_its_versions_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("meta.redb")).unwrap();
        store.add_version(version("a", "k1")).unwrap();
        store.add_version(version("a-b", "k2")).unwrap();
        assert!(store.remove_script("a").unwrap());
        assert!(!store.remove_script("a").unwrap());
        assert!(store.script("a").unwrap().is_none());
        assert!(store.versions("a").unwrap().is_empty());
        assert_eq!(store.versions("a-b").unwrap().len(), 1);
    }
}
