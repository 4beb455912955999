//! The driver's HTTP side: liveness and readiness probes, Prometheus metrics and a small
//! status page. A standby driver answers `/healthz` but not `/readyz`.

use std::fmt::Write as _;
use std::sync::{Arc, RwLock};

use sluice_core::http::{escape_html, Handler, HttpResponse};

use crate::manager::JobManager;
use crate::progress::{BatchMetrics, PHASES};
use crate::registry::Registry;
use crate::scheduler::Scheduler;

/// A per-job counter on `/metrics`: name, help, and its value in a job's metrics.
type JobCounter = (&'static str, &'static str, fn(&BatchMetrics) -> u64);
/// What the leader serves; absent while standing by.
#[derive(Clone)]
pub struct Term {
    pub manager: Arc<JobManager>,
    pub registry: Arc<Registry>,
    pub scheduler: Scheduler,
}

/// The current term, shared with the HTTP handler.
#[derive(Clone, Default)]
pub struct TermView(Arc<RwLock<Option<Term>>>);

impl TermView {
    pub fn set(&self, term: Option<Term>) {
        *self.0.write().expect("term lock") = term;
    }

    fn get(&self) -> Option<Term> {
        self.0.read().expect("term lock").clone()
    }
}

/// Routes: `/healthz`, `/readyz`, `/metrics`, `/`.
pub fn handler(view: TermView) -> Handler {
    Arc::new(move |path| match path {
        "/healthz" => HttpResponse::text(200, "ok\n"),
        "/readyz" => match view.get() {
            Some(_) => HttpResponse::text(200, "leader\n"),
            None => HttpResponse::text(503, "standby\n"),
        },
        "/metrics" => HttpResponse::metrics(metrics(view.get().as_ref())),
        "/" => HttpResponse::html(status_page(view.get().as_ref())),
        _ => HttpResponse::not_found(),
    })
}

fn metrics(term: Option<&Term>) -> String {
    let mut out = String::new();
    let leader = u8::from(term.is_some());
    let _ = writeln!(out, "# HELP sluice_leader Whether this driver is the leader.\n# TYPE sluice_leader gauge\nsluice_leader {leader}");
    let Some(term) = term else {
        return out;
    };
    let _ = writeln!(
        out,
        "# TYPE sluice_executors_alive gauge\nsluice_executors_alive {}",
        term.registry.alive().len()
    );
    let _ = writeln!(
        out,
        "# TYPE sluice_task_retries_total counter\nsluice_task_retries_total {}",
        term.scheduler.retries()
    );
    let _ = writeln!(
        out,
        "# HELP sluice_task_crashes_total Task attempts whose executor died under them or that panicked.\n# TYPE sluice_task_crashes_total counter\nsluice_task_crashes_total {}",
        term.scheduler.crashes()
    );
    let jobs = term.manager.jobs();
    let counters = [
        ("sluice_batches_total", "Committed batches."),
        ("sluice_input_rows_total", "Records read."),
        ("sluice_output_rows_total", "Rows written to the table."),
        (
            "sluice_malformed_records_total",
            "Records skipped or dead-lettered.",
        ),
        (
            "sluice_offsets_lost_total",
            "Offsets deleted by Kafka before they were read.",
        ),
        (
            "sluice_late_records_total",
            "Records older than the watermark their batch ran under.",
        ),
        (
            "sluice_compacted_files_total",
            "Small data files compaction replaced.",
        ),
        (
            "sluice_compacted_bytes_total",
            "Bytes of the data files compaction replaced.",
        ),
    ];
    let all: Vec<_> = jobs.iter().map(|j| (j, j.progress.metrics())).collect();
    for (i, (name, help)) in counters.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (job, m) in &all {
            let value = [
                m.batches,
                m.input_rows,
                m.output_rows,
                m.malformed,
                m.offsets_lost,
                m.late_records,
                m.files_compacted,
                m.bytes_compacted,
            ][i];
            let _ = writeln!(out, "{name}{{job=\"{}\"}} {value}", job.job_id);
        }
    }
    let _ = writeln!(out, "# HELP sluice_watermark_seconds The event-time watermark after the latest batch (jobs with a watermark).\n# TYPE sluice_watermark_seconds gauge");
    for (job, m) in &all {
        if let Some(ms) = m.watermark_ms {
            let _ = writeln!(
                out,
                "sluice_watermark_seconds{{job=\"{}\"}} {:.3}",
                job.job_id,
                ms as f64 / 1000.0
            );
        }
    }
    let _ = writeln!(out, "# HELP sluice_watermark_partition The partition holding the latest batch's watermark back (value 1).\n# TYPE sluice_watermark_partition gauge");
    for (job, m) in &all {
        if let Some((topic, partition)) = m.watermark_partition.rsplit_once('/') {
            let _ = writeln!(
                out,
                // Kafka topic names are letters, digits, '.', '_' and '-': no escaping.
                "sluice_watermark_partition{{job=\"{}\",topic=\"{topic}\",partition=\"{partition}\"}} 1",
                job.job_id,
            );
        }
    }
    let _ = writeln!(out, "# HELP sluice_idle_partitions Partitions watermark.idle_timeout leaves out of the latest batch's watermark.\n# TYPE sluice_idle_partitions gauge");
    for (job, m) in &all {
        if m.watermark_ms.is_some() {
            let _ = writeln!(
                out,
                "sluice_idle_partitions{{job=\"{}\"}} {}",
                job.job_id, m.idle_partitions
            );
        }
    }
    let _ = writeln!(out, "# HELP sluice_state_bytes State (windows, sessions, deduplication) the latest batch left.\n# TYPE sluice_state_bytes gauge");
    for (job, m) in &all {
        if let Some(bytes) = m.state_bytes {
            let _ = writeln!(out, "sluice_state_bytes{{job=\"{}\"}} {bytes}", job.job_id);
        }
    }
    let _ = writeln!(out, "# HELP sluice_state_rows State rows the latest batch left: open windows' partial aggregates per group, open sessions' rows, remembered keys.\n# TYPE sluice_state_rows gauge");
    for (job, m) in &all {
        if let Some(rows) = m.state_rows {
            let _ = writeln!(out, "sluice_state_rows{{job=\"{}\"}} {rows}", job.job_id);
        }
    }
    let state_counters: [JobCounter; 2] = [
        (
            "sluice_state_written_bytes_total",
            "State files written (each batch's changes and merges).",
            |m| m.state_bytes_written,
        ),
        (
            "sluice_state_read_bytes_total",
            "State files read from storage (not from executors' memory).",
            |m| m.state_bytes_read,
        ),
    ];
    for (name, help, value) in state_counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (job, m) in all.iter().filter(|(_, m)| m.state_bytes.is_some()) {
            let _ = writeln!(out, "{name}{{job=\"{}\"}} {}", job.job_id, value(m));
        }
    }
    let _ = writeln!(out, "# HELP sluice_batch_duration_seconds Batch duration by phase.\n# TYPE sluice_batch_duration_seconds histogram");
    for (job, m) in &all {
        for (phase, histogram) in PHASES.iter().zip(&m.durations) {
            let labels = format!("job=\"{}\",phase=\"{phase}\"", job.job_id);
            histogram.render(&mut out, "sluice_batch_duration_seconds", &labels);
        }
    }
    let _ = writeln!(out, "# HELP sluice_partition_lag Offsets behind the latest, after the last batch.\n# TYPE sluice_partition_lag gauge");
    for job in &jobs {
        if let Some(last) = job.progress.recent(1).pop() {
            for p in &last.partitions {
                let lag = (p.latest_offset - p.end_offset).max(0);
                let _ = writeln!(
                    out,
                    "sluice_partition_lag{{job=\"{}\",topic=\"{}\",partition=\"{}\"}} {lag}",
                    job.job_id, p.topic, p.partition
                );
            }
        }
    }
    let _ = writeln!(out, "# TYPE sluice_job_running gauge");
    for job in &jobs {
        let running = u8::from(!job.state().is_final());
        let _ = writeln!(
            out,
            "sluice_job_running{{job=\"{}\"}} {running}",
            job.job_id
        );
    }
    out
}

fn status_page(term: Option<&Term>) -> String {
    let mut page = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sluice</title>\
         <meta http-equiv=\"refresh\" content=\"5\"><style>body{font-family:sans-serif;margin:2em}\
         table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}\
         th{background:#eee}</style></head><body><h1>Sluice</h1>",
    );
    let Some(term) = term else {
        page.push_str(
            "<p>This driver is a <b>standby</b>; the leader serves jobs.</p></body></html>",
        );
        return page;
    };
    let _ = write!(
        page,
        "<p>Leader · {} executors alive · {} task retries · {} task crashes</p>",
        term.registry.alive().len(),
        term.scheduler.retries(),
        term.scheduler.crashes()
    );
    for job in term.manager.jobs() {
        let status = job.status(10);
        let _ = write!(
            page,
            "<h2>{}</h2><p>state <b>{}</b> · table {} · last committed batch {} · rows {}</p>",
            escape_html(&status.job_id),
            status.state,
            escape_html(&status.table),
            status.last_committed_batch,
            status.total_rows
        );
        let metrics = job.progress.metrics();
        if let Some(ms) = metrics.watermark_ms {
            let _ = write!(
                page,
                "<p>watermark {ms} ms · held back by {} · idle partitions {} · late records {} · state {} bytes</p>",
                match metrics.watermark_partition.as_str() {
                    "" => "none".to_string(),
                    partition => escape_html(partition),
                },
                metrics.idle_partitions,
                metrics.late_records,
                metrics.state_bytes.unwrap_or(0)
            );
        }
        if !status.message.is_empty() {
            let _ = write!(page, "<p><i>{}</i></p>", escape_html(&status.message));
        }
        page.push_str("<table><tr><th>batch</th><th>input rows</th><th>output rows</th><th>rows/s</th><th>plan ms</th><th>execute ms</th><th>commit ms</th><th>checkpoint ms</th><th>total ms</th></tr>");
        for b in status.recent_batches.iter().rev() {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                b.batch_id, b.input_rows, b.output_rows, b.input_rows_per_second, b.plan_ms, b.execute_ms, b.commit_ms, b.checkpoint_ms, b.duration_ms
            );
        }
        page.push_str("</table>");
    }
    page.push_str("</body></html>");
    page
}
