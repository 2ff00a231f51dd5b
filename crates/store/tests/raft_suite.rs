//! The Raft storage contract: openraft's own storage test suite run against our redb [`LogStore`] and
//! [`StateMachine`], plus the property openraft cannot check for us: everything it was told is durable is still
//! there after the files are closed and opened again.

#![allow(clippy::unwrap_used)] // a test that unwraps fails at the line that broke, which is what a test should do

use std::path::{Path, PathBuf};

use futures::stream;
use kairos_model::{Job, Timestamp};
use kairos_store::{Command, LogStore, StateMachine, TypeConfig};
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::testing::{blank_ent, log_id, membership_ent};
use openraft::type_config::TypeConfigExt;
use openraft::{RaftLogReader, RaftSnapshotBuilder, StorageError};
use tempfile::TempDir;

const RETAINED_DEFAULT: u32 = 100;

/// Fresh, independent stores in a fresh temporary directory for every test of the suite.
struct FreshStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for FreshStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().map_err(read_error)?;
        let (log, machine) = open_stores(dir.path()).map_err(read_error)?;
        Ok((dir, log, machine))
    }
}

fn read_error(err: std::io::Error) -> StorageError<TypeConfig> {
    StorageError::read(TypeConfig::err_from_error(&err))
}

fn open_stores(dir: &Path) -> std::io::Result<(LogStore, StateMachine)> {
    let log = LogStore::open(&dir.join("log.redb"))?;
    let machine = StateMachine::open(&state_path(dir), RETAINED_DEFAULT, None)?;
    Ok((log, machine))
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.redb")
}

#[test]
fn openraft_storage_suite_passes() {
    TypeConfig::run(async {
        Suite::test_all(FreshStores).await.unwrap();
    });
}

fn put_job_entry(index: u64, name: &str) -> EntryOf<TypeConfig> {
    let mut job = Job::empty(name);
    job.schedule = "* * * * * *".into();
    job.executor = "shell".into();
    let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    EntryOf::<TypeConfig>::new_normal(
        log_id::<TypeConfig>(1, 1, index),
        Command::PutJob { job: Box::new(job), now, expect_version: None },
    )
}

fn first_entries() -> Vec<EntryOf<TypeConfig>> {
    vec![
        blank_ent::<TypeConfig>(1, 1, 1),
        membership_ent::<TypeConfig>(1, 1, 2, vec![[1u64].into()]),
        put_job_entry(3, "nightly"),
        put_job_entry(4, "hourly"),
    ]
}

async fn apply_all(machine: &mut StateMachine, entries: Vec<EntryOf<TypeConfig>>) {
    let items = entries.into_iter().map(|entry| Ok((entry, None)));
    machine.apply(stream::iter(items)).await.unwrap();
}

#[tokio::test]
async fn log_vote_and_committed_survive_reopen() {
    let dir = TempDir::new().unwrap();
    let vote = VoteOf::<TypeConfig>::new_committed(3, 1);
    let committed: LogIdOf<TypeConfig> = log_id::<TypeConfig>(1, 1, 3);
    {
        let (mut log, _machine) = open_stores(dir.path()).unwrap();
        log.blocking_append(first_entries()).await.unwrap();
        log.save_vote(&vote).await.unwrap();
        log.save_committed(Some(committed)).await.unwrap();
        log.purge(log_id::<TypeConfig>(1, 1, 1)).await.unwrap();
    }

    let (mut log, _machine) = open_stores(dir.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id::<TypeConfig>(1, 1, 1)));
    assert_eq!(state.last_log_id, Some(log_id::<TypeConfig>(1, 1, 4)));
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    assert_eq!(log.read_committed().await.unwrap(), Some(committed));
    let entries = log.try_get_log_entries(0..10).await.unwrap();
    let expected: Vec<EntryOf<TypeConfig>> = first_entries().into_iter().skip(1).collect();
    assert_eq!(entries, expected);
}

#[tokio::test]
async fn fully_purged_log_remembers_its_last_id_after_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let (mut log, _machine) = open_stores(dir.path()).unwrap();
        log.blocking_append(first_entries()).await.unwrap();
        log.purge(log_id::<TypeConfig>(1, 1, 4)).await.unwrap();
    }

    let (mut log, _machine) = open_stores(dir.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id::<TypeConfig>(1, 1, 4)));
    assert_eq!(state.last_log_id, Some(log_id::<TypeConfig>(1, 1, 4)));
    assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
}

#[tokio::test]
async fn applied_state_jobs_and_snapshot_survive_reopen() {
    let dir = TempDir::new().unwrap();
    let built = {
        let (_log, mut machine) = open_stores(dir.path()).unwrap();
        apply_all(&mut machine, first_entries()).await;
        let mut builder = machine.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap()
    };

    let (_log, mut machine) = open_stores(dir.path()).unwrap();
    let (applied, membership) = machine.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id::<TypeConfig>(1, 1, 4)));
    assert_eq!(membership.log_id(), &Some(log_id::<TypeConfig>(1, 1, 2)));
    let reader = machine.reader();
    assert_eq!(reader.job_count().unwrap(), 2);
    assert!(reader.job("nightly").unwrap().is_some());
    let current = machine.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, built.meta);
    assert_eq!(current.snapshot.into_inner(), built.snapshot.into_inner());
}

#[tokio::test]
async fn installed_snapshot_replaces_state_on_another_machine() {
    let source_dir = TempDir::new().unwrap();
    let (_log, mut source) = open_stores(source_dir.path()).unwrap();
    apply_all(&mut source, first_entries()).await;
    let snapshot = source.get_snapshot_builder().await.build_snapshot().await.unwrap();

    let target_dir = TempDir::new().unwrap();
    let (_log, mut target) = open_stores(target_dir.path()).unwrap();
    apply_all(&mut target, vec![put_job_entry(1, "stale")]).await;
    target.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();

    let (applied, _) = target.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id::<TypeConfig>(1, 1, 4)));
    let reader = target.reader();
    assert!(reader.job("stale").unwrap().is_none());
    assert_eq!(reader.job("hourly").unwrap(), source.reader().job("hourly").unwrap());
    assert_eq!(target.get_current_snapshot().await.unwrap().unwrap().meta, snapshot.meta);
}

/// A server that catches up from a snapshot gets the ACL tokens and policies too (a new server would otherwise
/// refuse every token until the log entries that created them were replayed, and they may be purged).
#[tokio::test]
async fn an_installed_snapshot_carries_acl_tokens_and_policies() {
    use kairos_model::acl::{Capability, PathRule, Policy, Rules, Token, TokenType, secret_hash, uuid_from_bytes};
    let token = Token {
        accessor_id: uuid_from_bytes([7; 16]),
        secret_hash: secret_hash("secret"),
        name: "Bootstrap Token".into(),
        token_type: TokenType::Management,
        policies: vec![],
        create_time: "2026-01-01T00:00:00Z".parse().unwrap(),
        expiration_time: None,
    };
    let rule = PathRule { capabilities: vec![Capability::Read] };
    let policy = Policy {
        name: "team-a".into(),
        description: String::new(),
        rules: Rules { path: [("/v1/jobs/team-a-*".to_string(), rule)].into() },
    };
    let source_dir = TempDir::new().unwrap();
    let (_log, mut source) = open_stores(source_dir.path()).unwrap();
    let mut entries = first_entries();
    entries.push(EntryOf::<TypeConfig>::new_normal(
        log_id::<TypeConfig>(1, 1, 5),
        Command::AclPutPolicy { policy: policy.clone() },
    ));
    entries.push(EntryOf::<TypeConfig>::new_normal(
        log_id::<TypeConfig>(1, 1, 6),
        Command::AclBootstrap { token: token.clone() },
    ));
    apply_all(&mut source, entries).await;
    let snapshot = source.get_snapshot_builder().await.build_snapshot().await.unwrap();

    let target_dir = TempDir::new().unwrap();
    let (_log, mut target) = open_stores(target_dir.path()).unwrap();
    target.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    let reader = target.reader();
    assert!(reader.acl_bootstrapped().unwrap());
    assert_eq!(reader.acl_token_by_secret(&secret_hash("secret")).unwrap(), Some(token));
    assert_eq!(reader.acl_policy("team-a").unwrap(), Some(policy));
}

/// A server that catches up from a snapshot gets the secrets (values included, for the orders it sends as leader)
/// and the audit log, with its numbering, so the next record continues it.
#[tokio::test]
async fn an_installed_snapshot_carries_secrets_and_the_audit_log() {
    use kairos_model::audit::{AuditFilter, AuditRecord};
    use kairos_model::secret::SecretValue;
    let record = AuditRecord {
        seq: 0,
        at: "2026-01-01T00:00:00Z".parse().unwrap(),
        token: "anonymous".into(),
        accessor_id: None,
        client: "127.0.0.1:1".into(),
        node: "n".into(),
        method: "DELETE".into(),
        path: "/v1/jobs/x".into(),
        job: Some("x".into()),
        status: 200,
    };
    let at = record.at;
    let source_dir = TempDir::new().unwrap();
    let (_log, mut source) = open_stores(source_dir.path()).unwrap();
    let mut entries = first_entries();
    entries.push(EntryOf::<TypeConfig>::new_normal(
        log_id::<TypeConfig>(1, 1, 5),
        Command::SecretPut { name: "db".into(), value: SecretValue("pw".into()), at },
    ));
    entries.push(EntryOf::<TypeConfig>::new_normal(
        log_id::<TypeConfig>(1, 1, 6),
        Command::Audit { records: vec![record.clone(), record.clone()], keep: 10 },
    ));
    apply_all(&mut source, entries).await;
    let snapshot = source.get_snapshot_builder().await.build_snapshot().await.unwrap();

    let target_dir = TempDir::new().unwrap();
    let (_log, mut target) = open_stores(target_dir.path()).unwrap();
    target.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    let reader = target.reader();
    let values = reader.secret_values(&["db".to_string()].into()).unwrap();
    assert_eq!(values.get("db"), Some(&SecretValue("pw".into())));
    let (records, total) = reader.audit(&AuditFilter::default(), 0, 10).unwrap();
    assert_eq!((total, records[0].seq, records[1].seq), (2, 2, 1));
}
