//! Output processors (Dkron's `processors`) as a user observes them: `files` writes the full output to a file and,
//! not forwarding, leaves its path as the execution's output; `log` puts the output in the node's log; `syslog`
//! delivers it to a real receiver (a Unix datagram socket and a UDP socket bound by the test); a processor that
//! fails keeps the output and says so; an unknown processor or a wrong setting is refused naming it.

#![allow(clippy::unwrap_used)] // a test that unwraps fails at the line that broke, which is what a test should do

mod common;

use std::path::Path;

use common::*;

/// Output longer than the record's tail (4 KiB), so only the full stored output has all of it.
const LONG_OUTPUT: &str = "head -c 20000 /dev/zero | tr '\\0' x; echo; echo END-OF-OUTPUT";

fn job_with_processors(name: &str, command: &str, processors: Value) -> Value {
    with(shell_job(name, "@manually", command), json!({ "processors": processors }))
}

/// Run `job` by hand and wait until its run has finished; the execution as the API shows it by id (full output).
async fn run_once(server: &Server, job: &str) -> Exec {
    server.run(job).await;
    let execs = server.wait_executions(job, "its run finished", secs(30), |e| e.len() == 1 && e[0].is_final()).await;
    server.execution(job, &execs[0].id).await
}

/// The execution's output as `/output` serves it, and as the list (the record's tail) shows it.
async fn outputs(server: &Server, job: &str, id: &str) -> (String, String) {
    let served = server.get(&format!("/v1/jobs/{job}/executions/{id}/output")).await.expect(200).text.clone();
    let listed = server.executions(job).await[0].output.clone();
    (served, listed)
}

#[tokio::test(flavor = "multi_thread")]
async fn files_writes_the_full_output_and_not_forwarding_leaves_the_files_path_as_the_output() {
    let server = Server::fresh(&[]).await;
    let logs = tempfile::tempdir().unwrap();
    let log_dir = logs.path().join("made-by-kairos");
    let processors = json!({"files": {"log_dir": log_dir.to_str().unwrap(), "forward": "false"}});
    server.create_job(&job_with_processors("to-file", LONG_OUTPUT, processors)).await;

    let exec = run_once(&server, "to-file").await;
    assert_eq!(exec.status, "succeeded", "{exec:?}");
    let path = log_dir.join(format!("to-file.{}.log", exec.id));
    let written = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(written.len() > 20_000 && written.starts_with("xxxx"), "the whole output, {} bytes", written.len());
    assert!(written.ends_with("END-OF-OUTPUT\n"), "ends {:?}", &written[written.len() - 40..]);

    let path = path.to_str().unwrap();
    assert_eq!(exec.output, path, "the record by id holds the file's path instead of the output");
    assert_eq!(outputs(&server, "to-file", &exec.id).await, (path.to_string(), path.to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn files_forwarding_writes_the_file_and_keeps_the_output() {
    let server = Server::fresh(&[]).await;
    let logs = tempfile::tempdir().unwrap();
    let processors = json!({"files": {"log_dir": logs.path().to_str().unwrap(), "forward": true}});
    server.create_job(&job_with_processors("kept", LONG_OUTPUT, processors)).await;

    let exec = run_once(&server, "kept").await;
    let written = std::fs::read_to_string(logs.path().join(format!("kept.{}.log", exec.id))).unwrap();
    assert!(exec.output.len() > 20_000, "the full output is still served, {} bytes", exec.output.len());
    assert_eq!(written, exec.output, "the file holds what the API serves");
}

#[tokio::test(flavor = "multi_thread")]
async fn log_puts_the_output_in_the_nodes_log_and_leaves_a_note_in_the_record() {
    let server = Server::fresh(&[]).await;
    let command = "echo first-line-for-the-log; echo second-line-for-the-log";
    server.create_job(&job_with_processors("to-log", command, json!({"log": {}}))).await;

    let exec = run_once(&server, "to-log").await;
    assert_eq!(exec.output, "Output in kairos log", "not forwarded (Dkron's default): the record holds the note");
    let begin = format!("----- BEGIN OUTPUT job=to-log execution={} -----", exec.id);
    let log = wait_until("the node's log holds the output", secs(10), async || {
        let log = server.log();
        log.contains(&begin).then_some(log)
    })
    .await;
    let from_begin = &log[log.find(&begin).unwrap()..];
    let expected = format!("{begin}\nfirst-line-for-the-log\nsecond-line-for-the-log\n\n----- END OUTPUT -----");
    assert!(
        from_begin.starts_with(&expected),
        "the log has, from the marker on:\n{}",
        &from_begin[..300.min(from_begin.len())]
    );
}

/// One syslog message as a receiver parses it: priority, tag (APP-NAME), process id, text.
#[derive(Debug, PartialEq)]
struct Message {
    priority: u32,
    tag: String,
    pid: String,
    text: String,
}

/// A message in the BSD form of the local socket: `<PRI>Mmm dd hh:mm:ss tag[pid]: text` (RFC 3164).
fn parse_bsd(datagram: &str) -> Message {
    let (priority, rest) = datagram.strip_prefix('<').and_then(|r| r.split_once('>')).expect("<PRI>");
    let stamp = &rest.as_bytes()[..15];
    let shape = |i: usize, b: &u8| match i {
        0..=2 => b.is_ascii_alphabetic(),
        3 | 6 => *b == b' ',
        4 => *b == b' ' || b.is_ascii_digit(),
        9 | 12 => *b == b':',
        _ => b.is_ascii_digit(),
    };
    assert!(stamp.iter().enumerate().all(|(i, b)| shape(i, b)), "timestamp Mmm dd hh:mm:ss in {datagram:?}");
    let (tag_pid, text) = rest[16..].split_once(": ").expect("tag[pid]: text");
    let (tag, pid) = tag_pid.strip_suffix(']').and_then(|t| t.split_once('[')).expect("tag[pid]");
    Message { priority: priority.parse().unwrap(), tag: tag.into(), pid: pid.into(), text: text.into() }
}

/// A message in the RFC 5424 form: `<PRI>1 TIMESTAMP HOST APP-NAME PROCID MSGID STRUCTURED-DATA text`.
fn parse_5424(datagram: &str) -> Message {
    let (priority, rest) = datagram.strip_prefix('<').and_then(|r| r.split_once('>')).expect("<PRI>");
    let parts: Vec<&str> = rest.splitn(8, ' ').collect();
    assert_eq!(parts.len(), 8, "{datagram:?}");
    assert_eq!((parts[0], parts[5], parts[6]), ("1", "-", "-"), "version, no MSGID, no structured data");
    parts[1].parse::<Timestamp>().unwrap_or_else(|e| panic!("timestamp {:?}: {e}", parts[1]));
    assert!(!parts[2].is_empty(), "a host name");
    Message { priority: priority.parse().unwrap(), tag: parts[3].into(), pid: parts[4].into(), text: parts[7].into() }
}

/// Receive datagrams until `count` arrived or the deadline passed (then the test fails saying what came).
async fn receive(socket: impl AsyncFnMut(&mut [u8]) -> std::io::Result<usize>, count: usize) -> Vec<String> {
    let mut socket = socket;
    let mut got = Vec::new();
    let mut buffer = vec![0u8; 65536];
    while got.len() < count {
        match tokio::time::timeout(secs(20), socket(&mut buffer)).await {
            Ok(Ok(n)) => got.push(String::from_utf8(buffer[..n].to_vec()).unwrap()),
            Ok(Err(e)) => panic!("receiving: {e}"),
            Err(_) => panic!("{count} syslog messages did not arrive within 20s; got {got:?}"),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn syslog_delivers_each_line_to_a_unix_socket_and_over_udp() {
    let server = Server::fresh(&[]).await;
    let scratch = tempfile::tempdir().unwrap();
    let socket_path = scratch.path().join("log.sock");
    let unix = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = json!({"syslog": {"address": format!("unix://{}", socket_path.display()), "tag": "kt",
                                  "facility": "local3", "forward": "true"}});
    let remote = json!({"syslog": {"address": format!("udp://{}", udp.local_addr().unwrap())}});
    server.create_job(&job_with_processors("to-socket", "echo one; echo; echo two", local)).await;
    server.create_job(&job_with_processors("over-udp", "echo three; exit 2", remote)).await;

    let exec = run_once(&server, "to-socket").await;
    let got = receive(async |buffer: &mut [u8]| unix.recv(buffer).await, 2).await;
    let pid = server.pid().to_string();
    let prefix = format!("job=to-socket execution={}: ", exec.id);
    let expected = |text: &str| Message { priority: 19 * 8 + 6, tag: "kt".into(), pid: pid.clone(), text: text.into() };
    let parsed: Vec<Message> = got.iter().map(|d| parse_bsd(d)).collect();
    assert_eq!(
        parsed,
        vec![expected(&format!("{prefix}one")), expected(&format!("{prefix}two"))],
        "empty lines are left out"
    );
    assert_eq!(exec.output, "one\n\ntwo\n", "forwarded: the output is kept");

    let failed = run_once(&server, "over-udp").await;
    assert_eq!(failed.status, "failed");
    let got = receive(async |buffer: &mut [u8]| udp.recv(buffer).await, 1).await;
    let message = parse_5424(&got[0]);
    let text = format!("job=over-udp execution={}: three", failed.id);
    assert_eq!(message, Message { priority: 9 * 8 + 3, tag: "kairos".into(), pid, text }, "cron.err by default");
    assert_eq!(failed.output, "Output in syslog", "not forwarded: the record holds the note");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_processor_keeps_the_output_and_says_why() {
    let server = Server::fresh(&[]).await;
    let scratch = tempfile::tempdir().unwrap();
    let not_a_dir = scratch.path().join("a-file");
    std::fs::write(&not_a_dir, "").unwrap();
    let log_dir = not_a_dir.join("logs");
    let processors = json!({"files": {"log_dir": log_dir.to_str().unwrap()}, "log": {"forward": true}});
    server.create_job(&job_with_processors("unwritable", "echo precious output", processors)).await;

    let exec = run_once(&server, "unwritable").await;
    assert_eq!(exec.status, "succeeded", "a processor does not fail the run: {exec:?}");
    assert!(exec.output.starts_with("precious output\n"), "kept as if forwarded: {:?}", exec.output);
    assert!(
        exec.output.contains(&format!("[kairos: processor files failed, output kept: {}", log_dir.display())),
        "the output says why: {:?}",
        exec.output
    );
    let begin = format!("----- BEGIN OUTPUT job=unwritable execution={} -----\nprecious output\n", exec.id);
    let warning = "processor files failed, the output is kept";
    wait_until("the next processor got the output, and the node's log has a warning", secs(10), async || {
        let log = server.log();
        (log.contains(&begin) && log.contains(warning)).then_some(())
    })
    .await;
    assert!(!Path::new(&log_dir).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_processor_or_a_wrong_setting_is_refused_naming_it_and_nothing_is_created() {
    let server = Server::fresh(&[]).await;
    let refused = [
        (json!({"foo": {}}), "processors.foo", "unknown processor; known: files, log, syslog"),
        (json!({"files": {"log_dir": 3}}), "processors.files.log_dir", "expected a string, got a number 3"),
        (json!({"log": {"forward": "yes"}}), "processors.log.forward", "expected true or false"),
        (json!({"syslog": {"address": "smtp://x:25"}}), "processors.syslog.address", "expected unix:///path"),
    ];
    for (processors, field, problem) in refused {
        let reply = server.post("/v1/jobs", &job_with_processors("refused", "true", processors.clone())).await;
        reply.expect_error(400, field);
        assert!(reply.error().starts_with(&format!("{field}: {problem}")), "{processors}: {}", reply.error());
        assert!(!server.job_exists("refused").await, "{processors}: nothing created");
    }
}
