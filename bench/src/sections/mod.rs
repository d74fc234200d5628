//! One module per figure group of the table, each starting its own servers
//! so no group's state leaks into another's numbers.

pub mod builds;
pub mod burst;
pub mod cold;
mod dependencies;
pub mod scale;
pub mod upload;
pub mod warm;

/// A Python script that returns its data object unchanged.
pub const ECHO_PY: &str = "def handle(data):\n    return data\n";
/// A Node script that returns its data object unchanged.
pub const ECHO_JS: &str = "module.exports = async function (data) {\n  return data;\n};\n";
/// The file name of the python template's shim.
pub const PYTHON_SHIM: &str = "shim.py";
