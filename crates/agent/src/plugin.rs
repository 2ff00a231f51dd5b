//! Executor plugins: a program `kairos-executor-NAME` in the node's `--plugin-dir` runs the jobs whose executor is
//! `NAME`. The protocol is language-neutral and small:
//!
//! - **Start**: the agent executes the program with no arguments, in a process group of its own, with the
//!   environment a shell run has (`KAIROS_JOB_NAME`, `KAIROS_EXECUTION_ID`, `KAIROS_SCHEDULED_AT`,
//!   `KAIROS_ATTEMPT`, `KAIROS_TRIGGER`), and writes one JSON document to its standard input, then closes it:
//!   `{"protocol": 1, "job_name": "...", "execution_id": "...", "executor": "NAME", "config": {...}}` (`config` is
//!   the job's `executor_config`, secrets already put in place).
//! - **Output**: everything the program writes to stdout and stderr is the run's output, captured and streamed
//!   as it comes (capped, and secrets masked, like a shell run's).
//! - **Result**: exit status 0 is success; any other is a failure with that exit code; death by a signal is a
//!   failure naming the signal. A plugin that cannot start (not executable, missing) fails the run saying so.
//! - **Stop**: on cancel or when `executor_config.timeout` passes, the agent sends SIGTERM to the plugin's process
//!   group and SIGKILL after `--kill-grace`. A plugin that crashes takes nothing else down: it is a child process.
//!
//! Plugins are found when the node starts; their names are published in gossip with the built-in executors, so
//! jobs are placed only on nodes that have them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{Command, ConfigError, EXECUTORS, ShellConfig, parse_timeout};

/// The file name prefix of an executor plugin.
pub const PLUGIN_PREFIX: &str = "kairos-executor-";
/// The version of the protocol above, sent as `protocol`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The executor plugins of a node, by executor name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plugins {
    by_name: BTreeMap<String, PathBuf>,
}

impl Plugins {
    /// The plugins in `dir`: every executable `kairos-executor-NAME` whose name is not a built-in executor's.
    pub fn scan(dir: &Path) -> Result<Plugins, String> {
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("--plugin-dir: cannot read '{}': {e}", dir.display()))?;
        let mut by_name = BTreeMap::new();
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file_name.strip_prefix(PLUGIN_PREFIX) else { continue };
            if !valid_name(name) {
                return Err(format!(
                    "--plugin-dir: '{file_name}': an executor name is lowercase letters, digits, '-' and '_'"
                ));
            }
            if EXECUTORS.contains(&name) {
                return Err(format!("--plugin-dir: '{file_name}' would replace the built-in executor '{name}'"));
            }
            let path = entry.path();
            if !is_executable(&path) {
                return Err(format!("--plugin-dir: '{}' is not an executable file", path.display()));
            }
            by_name.insert(name.to_string(), path);
        }
        Ok(Plugins { by_name })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&Path> {
        self.by_name.get(name).map(PathBuf::as_path)
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// How a plugin run is started: the program, the timeout, and the document for its standard input.
pub(crate) fn shell_config(
    program: &Path,
    executor: &str,
    job_name: &str,
    execution_id: &str,
    config: &BTreeMap<String, String>,
) -> Result<ShellConfig, ConfigError> {
    let timeout = parse_timeout(config, None)?;
    let input = serde_json::json!({
        "protocol": PROTOCOL_VERSION,
        "job_name": job_name,
        "execution_id": execution_id,
        "executor": executor,
        "config": config,
    });
    Ok(ShellConfig {
        command: Command::Direct(vec![program.to_string_lossy().into_owned()]),
        env: Vec::new(),
        cwd: None,
        timeout,
        input: Some(input.to_string().into_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn plugins_are_the_executables_named_for_an_executor() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "kairos-executor-echo", 0o755);
        write(dir.path(), "README", 0o644);
        let plugins = Plugins::scan(dir.path()).unwrap();
        assert_eq!(plugins.names().collect::<Vec<_>>(), ["echo"]);
        write(dir.path(), "kairos-executor-shell", 0o755);
        assert!(Plugins::scan(dir.path()).unwrap_err().contains("built-in executor 'shell'"));
        std::fs::remove_file(dir.path().join("kairos-executor-shell")).unwrap();
        write(dir.path(), "kairos-executor-data", 0o644);
        assert!(Plugins::scan(dir.path()).unwrap_err().contains("not an executable"));
        std::fs::remove_file(dir.path().join("kairos-executor-data")).unwrap();
        write(dir.path(), "kairos-executor-Bad", 0o755);
        assert!(Plugins::scan(dir.path()).unwrap_err().contains("lowercase"));
        assert!(Plugins::scan(&dir.path().join("missing")).unwrap_err().contains("cannot read"));
    }
}
