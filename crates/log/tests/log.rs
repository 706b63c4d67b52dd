//! The decision log against real files and a real nats-server: what is appended is read
//! back once, in order; rotation, a cut-short segment and retention; a full queue drops
//! and counts; a JetStream restart loses nothing acknowledged; the request is redacted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cascade_log::read::{self, Filter, Source};
use cascade_log::schema::{Decision, Event, LogEntry};
use cascade_log::{DecisionLog, LogError, LogSettings, LogSink, Record, SinkKind};
use cascade_proto::openrtb::v1::{BidRequest, Device, Geo, Regs, User};
use cascade_testkit::NatsServer;

fn decision(request_id: &str, account_id: &str) -> LogEntry {
    LogEntry {
        decision: Some(Decision {
            request_id: request_id.into(),
            account_id: account_id.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn file_settings(directory: &std::path::Path) -> LogSettings {
    LogSettings {
        sink: SinkKind::File,
        directory: directory.to_path_buf(),
        ..Default::default()
    }
}

async fn request_ids(source: &Source) -> Vec<String> {
    read::collect(source, &Filter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.decision.map(|d| d.request_id).unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn entries_are_read_back_in_order_across_rotated_segments() {
    let dir = tempfile::tempdir().unwrap();
    let settings = LogSettings {
        // Every batch of a few entries starts a new segment.
        segment_max_bytes: 4_096,
        batch_max_entries: 3,
        ..file_settings(dir.path())
    };
    let log = DecisionLog::open(&settings).await.unwrap();
    // Hex of random ids: it does not compress away.
    let padding: String = (0..100)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    let expected: Vec<String> = (0..40).map(|i| format!("req-{i:02}")).collect();
    for id in &expected {
        let mut entry = decision(id, "8953");
        entry.decision.as_mut().unwrap().error = padding.clone();
        log.append(entry);
    }
    log.close(Duration::from_secs(10)).await;
    assert_eq!(log.dropped(), 0);
    let segments = cascade_log::segments(dir.path()).unwrap();
    assert!(
        segments.len() > 3,
        "rotated into {} segments",
        segments.len()
    );

    let source = Source::Directory(dir.path().to_path_buf());
    assert_eq!(request_ids(&source).await, expected);
    // The tail spans segments: the last five, oldest first.
    assert_eq!(tail_ids(&source, 5).await, expected[35..]);

    let filter = Filter {
        request_id: Some("req-07".into()),
        ..Default::default()
    };
    let found = read::collect(&source, &filter).await.unwrap();
    assert_eq!(found.len(), 1);
    let entry = &found[0];
    assert_eq!(entry.schema_version, cascade_log::schema::SCHEMA_VERSION);
    assert!(entry.time_unix_ms > 0 && !entry.entry_id.is_empty());
}

#[tokio::test]
async fn a_segment_cut_short_mid_batch_reads_up_to_its_last_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = DecisionLog::open(&file_settings(dir.path())).await.unwrap();
    log.append(decision("whole", "8953"));
    log.close(Duration::from_secs(5)).await;
    let log = DecisionLog::open(&file_settings(dir.path())).await.unwrap();
    log.append(decision("cut", "8953"));
    log.close(Duration::from_secs(5)).await;
    // A crash in the middle of writing the second segment's batch.
    let segments = cascade_log::segments(dir.path()).unwrap();
    let last = segments.last().unwrap();
    let bytes = std::fs::read(last).unwrap();
    std::fs::write(last, &bytes[..bytes.len() / 2]).unwrap();

    let source = Source::Directory(dir.path().to_path_buf());
    assert_eq!(request_ids(&source).await, ["whole"]);
}

#[tokio::test]
async fn segments_past_the_retention_are_deleted_when_a_new_one_starts() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join(format!(
        "segment-{:016}-0000{}",
        1,
        cascade_log::SEGMENT_SUFFIX
    ));
    std::fs::write(&old, b"").unwrap();
    let month_ago = std::time::SystemTime::now() - Duration::from_secs(31 * 24 * 3_600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(month_ago)
        .unwrap();
    let settings = LogSettings {
        retention_hours: 24 * 30,
        ..file_settings(dir.path())
    };
    let log = DecisionLog::open(&settings).await.unwrap();
    log.append(decision("new", "8953"));
    log.close(Duration::from_secs(5)).await;
    assert!(!old.exists(), "the month-old segment is gone");
    assert_eq!(
        request_ids(&Source::Directory(dir.path().to_path_buf())).await,
        ["new"]
    );
}

/// A sink that takes nothing until it is let go.
struct StuckSink {
    release: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl LogSink for StuckSink {
    async fn write(&self, _batch: &[Record]) -> Result<(), LogError> {
        self.release.notified().await;
        Ok(())
    }

    fn describe(&self) -> String {
        "stuck".into()
    }
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_entries_and_never_waits() {
    let release = Arc::new(tokio::sync::Notify::new());
    let settings = LogSettings {
        queue_capacity: 8,
        batch_max_entries: 1,
        ..Default::default()
    };
    let log = DecisionLog::with_sink(
        Arc::new(StuckSink {
            release: release.clone(),
        }),
        &settings,
    );
    // The writer takes the first entry and is stuck writing it.
    log.append(decision("first", "8953"));
    tokio::task::yield_now().await;
    let started = Instant::now();
    for i in 0..1_000 {
        log.append(decision(&format!("req-{i}"), "8953"));
    }
    let took = started.elapsed();
    // 8 wait in the queue (one more if the writer had not taken the first yet).
    let dropped = log.dropped();
    assert!((991..=992).contains(&dropped), "dropped {dropped}");
    assert!(
        took < Duration::from_millis(500),
        "1,000 appends took {took:?}"
    );
    release.notify_waiters();
}

#[tokio::test]
async fn the_logged_request_keeps_no_identifiers_without_consent_or_for_a_child() {
    let dir = tempfile::tempdir().unwrap();
    let log = DecisionLog::open(&file_settings(dir.path())).await.unwrap();
    let request = |id: &str, regs: Regs| BidRequest {
        id: id.into(),
        regs: Some(regs),
        user: Some(User {
            id: "user-123".into(),
            buyeruid: "buyer-9".into(),
            ..Default::default()
        }),
        device: Some(Device {
            ifa: "ifa-abc".into(),
            ip: "203.0.113.77".into(),
            geo: Some(Geo {
                country: "DEU".into(),
                lat: Some(52.520_008),
                lon: Some(13.404_954),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let logged = |id: &str, regs: Regs| {
        let mut entry = decision(id, "8953");
        entry.decision.as_mut().unwrap().request = Some(request(id, regs));
        entry
    };
    log.append(logged("no-signal", Regs::default()));
    log.append(logged(
        "gdpr-without-consent",
        Regs {
            gdpr: Some(1),
            ..Default::default()
        },
    ));
    log.append(logged(
        "coppa",
        Regs {
            coppa: Some(1),
            ..Default::default()
        },
    ));
    let mut huge = logged("huge", Regs::default());
    huge.decision
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .imp = vec![Default::default(); 20_000];
    log.append(huge);
    let mut limited = logged("lmt", Regs::default());
    let limited_request = limited.decision.as_mut().unwrap().request.as_mut().unwrap();
    limited_request.device.as_mut().unwrap().lmt = Some(1);
    log.append(limited);
    log.close(Duration::from_secs(5)).await;

    let entries = read::collect(
        &Source::Directory(dir.path().to_path_buf()),
        &Filter::default(),
    )
    .await
    .unwrap();
    let decisions: Vec<&Decision> = entries.iter().filter_map(|e| e.decision.as_ref()).collect();
    let kept = decisions[0].request.as_ref().unwrap();
    assert_eq!(kept.user.as_ref().unwrap().id, "user-123");
    assert_eq!(kept.device.as_ref().unwrap().ifa, "ifa-abc");
    for redacted in &decisions[1..3] {
        let request = redacted.request.as_ref().unwrap();
        let (user, device) = (
            request.user.as_ref().unwrap(),
            request.device.as_ref().unwrap(),
        );
        assert_eq!(
            (user.id.as_str(), user.buyeruid.as_str()),
            ("", ""),
            "{}",
            redacted.request_id
        );
        assert_eq!(device.ifa, "", "{}", redacted.request_id);
        let geo = device.geo.as_ref().unwrap();
        assert_eq!(geo.country, "DEU");
        assert_ne!(geo.lat, Some(52.520_008), "{}", redacted.request_id);
        assert_ne!(device.ip, "203.0.113.77", "{}", redacted.request_id);
        let withheld = &redacted.privacy.as_ref().unwrap().withheld;
        assert!(withheld.iter().any(|w| w == "user ids"), "{withheld:?}");
    }
    let huge = decisions[3];
    assert!(huge.request_omitted && huge.request.is_none());
    assert!(huge.request_bytes as usize > LogSettings::default().max_request_bytes);
    // Limit ad tracking: no advertising id, the rest kept.
    let limited = decisions[4].request.as_ref().unwrap();
    assert_eq!(limited.device.as_ref().unwrap().ifa, "");
    assert_eq!(limited.user.as_ref().unwrap().id, "user-123");
    assert_eq!(
        decisions[4].privacy.as_ref().unwrap().withheld,
        ["device ids"]
    );
}

#[tokio::test]
async fn a_jetstream_restart_loses_nothing_the_stream_acknowledged() {
    let mut nats = NatsServer::start()
        .await
        .expect("nats-server (Debian package nats-server)");
    let settings = LogSettings {
        sink: SinkKind::Jetstream,
        nats_url: nats.url(),
        ..Default::default()
    };
    let log = DecisionLog::open(&settings).await.unwrap();
    let source = Source::JetStream {
        url: nats.url(),
        stream: settings.stream.clone(),
    };
    for i in 0..50 {
        log.append(decision(&format!("before-{i:02}"), "8953"));
    }
    let event = LogEntry {
        event: Some(Event {
            selection_id: "sel-1".into(),
            kind: "impression".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    log.append(event);
    wait_for_entries(&source, 51).await;

    nats.kill().await.unwrap();
    // Appended while the server is down: the writer keeps them and retries.
    for i in 0..20 {
        log.append(decision(&format!("during-{i:02}"), "8953"));
    }
    nats.restart().await.unwrap();
    wait_for_entries(&source, 71).await;
    log.close(Duration::from_secs(5)).await;

    let ids = request_ids(&source).await;
    let expected: Vec<String> = (0..50)
        .map(|i| format!("before-{i:02}"))
        .chain(std::iter::once(String::new()))
        .chain((0..20).map(|i| format!("during-{i:02}")))
        .collect();
    assert_eq!(ids, expected, "every entry once, in order");
    let events = read::collect(
        &source,
        &Filter {
            kind: Some(cascade_log::EntryKind::Event),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(tail_ids(&source, 3).await, expected[68..]);
    // A start after the last entry finds nothing, and says so at once.
    let later = Filter {
        since_ms: Some(cascade_log::now_unix_millis() + 3_600_000),
        ..Default::default()
    };
    let found = tokio::time::timeout(Duration::from_secs(10), read::collect(&source, &later))
        .await
        .expect("a query past the end returns");
    assert!(found.unwrap().is_empty());
}

async fn tail_ids(source: &Source, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    read::tail(source, &Filter::default(), count, false, &mut |entry| {
        ids.push(entry.decision.map(|d| d.request_id).unwrap_or_default());
        true
    })
    .await
    .unwrap();
    ids
}

async fn wait_for_entries(source: &Source, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = read::collect(source, &Filter::default())
            .await
            .map_or(0, |entries| entries.len());
        if found >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{found} of {count} entries in the stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn the_json_form_names_enumerations_and_reads_them_back() {
    use cascade_log::schema::{Attempt, Imp};
    use cascade_proto::decision::v1::{AttemptOutcome, SourceKind};
    let mut entry = decision("json", "8953");
    entry.decision.as_mut().unwrap().imps = vec![Imp {
        attempts: vec![Attempt {
            source: SourceKind::MediatedNetwork as i32,
            outcome: AttemptOutcome::Timeout as i32,
            ..Default::default()
        }],
        ..Default::default()
    }];
    let json = serde_json::to_value(&entry).unwrap();
    let attempt = &json["decision"]["imps"][0]["attempts"][0];
    assert_eq!(attempt["source"], "SOURCE_KIND_MEDIATED_NETWORK");
    assert_eq!(attempt["outcome"], "ATTEMPT_OUTCOME_TIMEOUT");
    let back: LogEntry = serde_json::from_value(json).unwrap();
    assert_eq!(back, entry);
}
