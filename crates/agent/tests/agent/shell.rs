//! The shell executor against real processes.

use std::time::{Duration, Instant};

use kairos_agent::{RunStatus, TAIL_BYTES};
use tokio_util::sync::CancellationToken;

use crate::support::{agent, agent_with_grace, eventually, pids, process_gone, spec, wait_gone};

#[tokio::test]
async fn success_captures_stdout_and_stderr_and_stores_them() {
    let agent = agent();
    let spec = spec("shell", &[("command", "echo hello; echo oops >&2; echo bye"), ("shell", "true")]);
    let (job, id) = (spec.job_name.clone(), spec.execution_id.clone());
    let outcome = agent.runner.run(spec, CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(outcome.error, None);
    for line in ["hello\n", "oops\n", "bye\n"] {
        assert!(outcome.output_tail.contains(line), "{outcome:?}");
    }
    assert_eq!(outcome.output_bytes, 15);
    // An output that fits in the tail is all in the tail: no file is created for it.
    assert_eq!(agent.store.read(&job, &id).unwrap(), None);
    assert!(agent.store.list(&job).unwrap().is_empty());
}

#[tokio::test]
async fn an_output_larger_than_the_tail_is_stored_in_full() {
    let agent = agent();
    let spec = spec("shell", &[("command", "seq 1 5000"), ("shell", "true")]);
    let (job, id) = (spec.job_name.clone(), spec.execution_id.clone());
    let outcome = agent.runner.run(spec, CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    let stored = agent.store.read(&job, &id).unwrap().expect("stored output");
    let expected: String = (1..=5000).map(|n| format!("{n}\n")).collect();
    assert_eq!(stored, expected);
    assert!(expected.ends_with(&outcome.output_tail));
    assert!(outcome.output_tail.len() <= kairos_agent::TAIL_BYTES);
}

#[tokio::test]
async fn non_zero_exit_fails_with_the_exit_code() {
    let agent = agent();
    let outcome = agent
        .runner
        .run(spec("shell", &[("command", "echo no; exit 3"), ("shell", "true")]), CancellationToken::new())
        .await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(outcome.exit_code, Some(3));
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.output_tail, "no\n");
}

#[tokio::test]
async fn death_by_signal_fails_and_names_the_signal() {
    let agent = agent();
    let outcome = agent
        .runner
        .run(spec("shell", &[("command", "kill -9 $$"), ("shell", "true")]), CancellationToken::new())
        .await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(outcome.exit_code, None);
    assert_eq!(outcome.error.as_deref(), Some("killed by signal 9 (SIGKILL)"));
}

/// Under memory pressure the kernel's out-of-memory killer chooses a run before the node that started it.
#[tokio::test]
async fn a_run_is_the_out_of_memory_killers_first_choice() {
    let agent = agent();
    // The script itself, what the script starts (it inherits the score), and a program run without a shell.
    let runs = [
        ("cat /proc/self/oom_score_adj", "true"),
        ("sh -c 'cat /proc/self/oom_score_adj' | cat", "true"),
        ("cat /proc/self/oom_score_adj", "false"),
    ];
    for (command, shell) in runs {
        let spec = spec("shell", &[("command", command), ("shell", shell)]);
        let outcome = agent.runner.run(spec, CancellationToken::new()).await;
        assert_eq!(outcome.status, RunStatus::Succeeded, "{command}: {outcome:?}");
        assert_eq!(outcome.output_tail, format!("{}\n", kairos_agent::RUN_OOM_SCORE_ADJ), "{command}: {outcome:?}");
    }
}

/// Raising the score first does not show in the script: its first line is still line 1, `$0` is the shell.
#[tokio::test]
async fn a_shell_script_keeps_its_line_numbers_and_name() {
    let agent = agent();
    let outcome = agent
        .runner
        .run(
            spec("shell", &[("command", "echo \"$0\"\nno-such-command-here"), ("shell", "true")]),
            CancellationToken::new(),
        )
        .await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    // stdout and stderr come through pipes of their own, so either line may be captured first.
    assert!(outcome.output_tail.lines().any(|line| line == "/bin/sh"), "{outcome:?}");
    assert!(outcome.output_tail.contains(": 2: no-such-command-here: not found"), "{outcome:?}");
}

#[tokio::test]
async fn env_cwd_and_job_name_reach_the_process() {
    let agent = agent();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    let mut spec = spec(
        "shell",
        &[
            ("command", r#"echo "$A|$B|$ENV_JOB_NAME|$KAIROS_JOB_NAME|$KAIROS_EXECUTION_ID|$(pwd -P)""#),
            ("shell", "true"),
            ("env", "A=1,B=two words"),
            ("cwd", cwd.to_str().unwrap()),
        ],
    );
    spec.extra_env.push(("KAIROS_EXECUTION_ID".into(), spec.execution_id.clone()));
    let expected = format!("1|two words|test-job|test-job|{}|{}\n", spec.execution_id, cwd.display());
    let outcome = agent.runner.run(spec, CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.output_tail, expected);
}

#[tokio::test]
async fn without_shell_the_command_is_split_by_quotes_and_executed_directly() {
    let agent = agent();
    let command = r#"printf "%s|" 'a b' "c  d" e $HOME"#;
    let outcome = agent.runner.run(spec("shell", &[("command", command)]), CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.output_tail, "a b|c  d|e|$HOME|");
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group_including_grandchildren() {
    let agent = agent();
    let spec = spec("shell", &[("command", "sleep 100 & echo $!; sleep 100"), ("shell", "true"), ("timeout", "300ms")]);
    let started = Instant::now();
    let outcome = agent.runner.run(spec, CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::TimedOut, "{outcome:?}");
    assert_eq!(outcome.error.as_deref(), Some("timed out after 300ms"));
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let grandchild = pids(&outcome.output_tail)[0];
    wait_gone(grandchild).await;
}

#[tokio::test]
async fn processes_ignoring_sigterm_are_killed_after_the_grace_period() {
    let agent = agent();
    let spec = spec(
        "shell",
        &[("command", "trap '' TERM; sleep 100 & echo $!; sleep 100"), ("shell", "true"), ("timeout", "200ms")],
    );
    let started = Instant::now();
    let outcome = agent.runner.run(spec, CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::TimedOut, "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    wait_gone(pids(&outcome.output_tail)[0]).await;
}

#[tokio::test]
async fn group_members_get_the_grace_period_to_clean_up_after_sigterm() {
    let agent = agent_with_grace(Duration::from_secs(5));
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("cleaned-up");
    // A background worker that detached from our pipes and needs a moment to clean up on SIGTERM.
    let command = format!(
        "(exec >/dev/null 2>&1; trap 'sleep 0.1; touch {}; exit 0' TERM; while :; do sleep 0.05; done) & sleep 100",
        marker.display()
    );
    let spec = spec("shell", &[("command", &command), ("shell", "true"), ("timeout", "200ms")]);
    let started = Instant::now();
    let outcome = agent.runner.run(spec, CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::TimedOut, "{outcome:?}");
    assert!(marker.exists(), "the worker was killed before it could clean up");
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn cancel_terminates_the_group_and_reports_cancelled() {
    let agent = agent();
    let spec = spec("shell", &[("command", "sleep 100 & echo $$ $!; wait"), ("shell", "true")]);
    let (job, id) = (spec.job_name.clone(), spec.execution_id.clone());
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (runner, cancel) = (agent.runner.clone(), cancel.clone());
        async move { runner.run(spec, cancel).await }
    });
    let started = eventually("both pids in the output", || {
        let output = agent.store.read(&job, &id).ok()??;
        let pids = pids(&output);
        (pids.len() == 2).then_some(pids)
    })
    .await;
    assert!(started.iter().all(|&pid| !process_gone(pid)));
    cancel.cancel();
    let outcome = run.await.unwrap();
    assert_eq!(outcome.status, RunStatus::Cancelled, "{outcome:?}");
    assert_eq!(outcome.error.as_deref(), Some("cancelled"));
    for pid in started {
        wait_gone(pid).await;
    }
}

#[tokio::test]
async fn a_background_grandchild_holding_the_pipes_does_not_hang_the_run() {
    let agent = agent();
    let spec = spec("shell", &[("command", "sleep 100 & echo $!"), ("shell", "true")]);
    let started = Instant::now();
    let outcome = agent.runner.run(spec, CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    wait_gone(pids(&outcome.output_tail)[0]).await;
}

#[tokio::test]
async fn output_beyond_the_cap_is_counted_and_marked_but_not_stored() {
    let agent = agent();
    let mut spec = spec("shell", &[("command", "head -c 5000 /dev/zero | tr '\\0' x"), ("shell", "true")]);
    spec.output_limit_bytes = 1000;
    let (job, id) = (spec.job_name.clone(), spec.execution_id.clone());
    let outcome = agent.runner.run(spec, CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.output_bytes, 5000);
    assert_eq!(outcome.output_tail, "x".repeat(TAIL_BYTES));
    let stored = agent.store.read(&job, &id).unwrap().unwrap();
    let expected = format!("{}\n[kairos: output truncated, 4000 bytes omitted]\n", "x".repeat(1000));
    assert_eq!(stored, expected);
}

#[tokio::test]
async fn the_tail_starts_on_a_character_boundary() {
    let agent = agent();
    // 3000 two-byte characters then one ASCII byte: the last 4096 bytes begin in the middle of an 'é'.
    let command = "yes é | head -n 3000 | tr -d '\\n'; printf a";
    let outcome =
        agent.runner.run(spec("shell", &[("command", command), ("shell", "true")]), CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.output_bytes, 6001);
    assert_eq!(outcome.output_tail, format!("{}a", "é".repeat(2047)));
}

#[tokio::test]
async fn a_missing_program_fails_with_a_clear_error_in_the_output() {
    let agent = agent();
    let spec = spec("shell", &[("command", "/nonexistent/kairos-prog --flag")]);
    let (job, id) = (spec.job_name.clone(), spec.execution_id.clone());
    let outcome = agent.runner.run(spec, CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(outcome.exit_code, None);
    let error = outcome.error.unwrap();
    assert!(error.starts_with("cannot start '/nonexistent/kairos-prog': "), "{error}");
    assert!(error.contains("No such file"), "{error}");
    assert_eq!(outcome.output_tail, format!("{error}\n"));
    assert_eq!(agent.store.read(&job, &id).unwrap(), None, "a short output lives in the tail only");
}

#[tokio::test]
async fn a_missing_working_directory_fails_before_starting() {
    let agent = agent();
    let outcome = agent
        .runner
        .run(spec("shell", &[("command", "true"), ("cwd", "/nonexistent/dir")]), CancellationToken::new())
        .await;
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(error.contains("working directory '/nonexistent/dir'"), "{error}");
}

#[tokio::test]
async fn invalid_configs_and_unknown_executors_fail_with_the_field_named() {
    let agent = agent();
    let outcome = agent.runner.run(spec("shell", &[]), CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(outcome.error.as_deref(), Some("executor_config.command: must not be empty"));
    let outcome = agent.runner.run(spec("docker", &[]), CancellationToken::new()).await;
    assert_eq!(
        outcome.error.as_deref(),
        Some("executor: unknown executor 'docker'; known: shell, http, nats, rabbitmq, redis, kafka, sql, grpc")
    );
}

#[tokio::test]
async fn a_run_cancelled_before_it_starts_runs_nothing() {
    let agent = agent();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let command = format!("touch {}", marker.display());
    let cancel = CancellationToken::new();
    cancel.cancel();
    let outcome = agent.runner.run(spec("shell", &[("command", &command)]), cancel).await;
    assert_eq!(outcome.status, RunStatus::Cancelled);
    assert!(!marker.exists());
}
