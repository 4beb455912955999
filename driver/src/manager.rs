//! The job manager: validates and accepts jobs, runs their loops, answers status and stop,
//! and resumes active jobs from the checkpoint store when the driver starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::checkpoint::{CheckpointStore, JobLog, JobRecord};
use sluice_core::spec::JobSpec;
use sluice_core::JobId;
use sluice_iceberg::catalog::open_catalog;
use sluice_iceberg::sink::{dead_letter_ident, ensure_table, table_ident};
use sluice_kafka::decode::dead_letter_schema;
use sluice_kafka::read::{Connection, OffsetReader};
use sluice_proto::v1::JobStatus;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::error::{Error, Result};
use crate::job::plan::JobRef;
use crate::job::{JobRunner, JobShared, JobState, StopRequest};
use crate::scheduler::Scheduler;

/// How long submit waits for Kafka to answer.
const SUBMIT_KAFKA_TIMEOUT: Duration = Duration::from_secs(15);
/// Batches listed in a status reply.
pub const STATUS_RECENT_BATCHES: usize = 10;

struct JobEntry {
    shared: Arc<JobShared>,
    handle: Option<JoinHandle<()>>,
}

/// All jobs this driver knows.
pub struct JobManager {
    store: Arc<dyn CheckpointStore>,
    scheduler: Scheduler,
    jobs: Mutex<HashMap<JobId, JobEntry>>,
    /// Submissions beyond this many running jobs are refused.
    max_jobs: usize,
}

impl JobManager {
    pub fn new(
        store: Arc<dyn CheckpointStore>,
        scheduler: Scheduler,
        max_jobs: usize,
    ) -> Arc<JobManager> {
        Arc::new(JobManager {
            store,
            scheduler,
            jobs: Mutex::new(HashMap::new()),
            max_jobs,
        })
    }

    /// Validates a spec against Kafka and the catalog, creates the table, starts the job.
    /// Returns the job id and the table location.
    pub async fn submit(self: &Arc<Self>, text: &str) -> Result<(JobId, String)> {
        let spec = JobSpec::parse(text)?;
        {
            let jobs = self.jobs.lock().expect("jobs lock");
            if let Some(entry) = jobs.get(spec.name.as_str()) {
                if !entry.shared.state().is_final() {
                    return Err(Error::JobRunning(spec.job_id()));
                }
            }
            let running = jobs
                .values()
                .filter(|e| !e.shared.state().is_final())
                .count();
            if running >= self.max_jobs {
                return Err(Error::TooManyJobs { running });
            }
        }
        self.check_table_not_taken(&spec).await?;
        if let Some(avro) = &spec.source().kafka.avro {
            sluice_kafka::decode::avro::check_reader_schema(avro)?;
        }
        let job = JobRef::plan(&spec.name, &spec).await?;
        check_kafka(&spec).await?;
        let catalog = open_catalog(&spec.sink.iceberg.catalog).await?;
        let sink = &spec.sink.iceberg;
        let table = ensure_table(
            catalog.as_ref(),
            &table_ident(sink),
            &job.output_schema,
            &sink.partition_fields()?,
        )
        .await?;
        if spec.writes_dead_letters() {
            ensure_table(
                catalog.as_ref(),
                &dead_letter_ident(sink),
                &dead_letter_schema(),
                &[],
            )
            .await?;
        }
        let location = table.metadata().location().to_string();
        let record = JobRecord {
            job_id: spec.job_id(),
            spec_json: spec.to_json(),
            active: true,
            state: JobState::Running.as_str().into(),
            message: String::new(),
        };
        JobLog::new(self.store.clone(), &spec.name)
            .put_job(&record)
            .await?;
        let job_id = spec.job_id();
        info!(job = %job_id, table = %location, "job submitted");
        self.start(spec, Some(job));
        Ok((job_id, location))
    }

    /// Refuses a job whose sink table another active job writes: two writers of one table
    /// would each take the other's snapshots for evidence and expire them.
    async fn check_table_not_taken(&self, spec: &JobSpec) -> Result<()> {
        let wanted = sink_key(spec);
        for record in JobLog::all_jobs(self.store.as_ref()).await? {
            if !record.active || *record.job_id == *spec.name {
                continue;
            }
            let Ok(other) = JobSpec::parse(&record.spec_json) else {
                continue;
            };
            if sink_key(&other) == wanted {
                return Err(Error::TableTaken {
                    table: format!("{}.{}", wanted.1, wanted.2),
                    job: record.job_id,
                });
            }
        }
        Ok(())
    }

    /// Starts the loops of every active job in the store (driver start-up) and remembers
    /// the ended ones, so that their status survives a driver restart or failover.
    pub async fn resume_jobs(self: &Arc<Self>) -> Result<()> {
        for record in JobLog::all_jobs(self.store.as_ref()).await? {
            let spec = match JobSpec::parse(&record.spec_json) {
                Ok(spec) => spec,
                Err(e) => {
                    error!(job = %record.job_id, error = %e, "stored spec does not parse; job not resumed");
                    continue;
                }
            };
            if record.active {
                info!(job = %record.job_id, "resuming job from its checkpoint");
                self.start(spec, None);
                continue;
            }
            let shared = JobShared::new(spec);
            let state = JobState::parse(&record.state).unwrap_or(JobState::Stopped);
            shared.set_final(state, &record.message);
            let log = JobLog::new(self.store.clone(), &record.job_id);
            if let Some(checkpoint) = log.checkpoint().await? {
                shared.set_last_committed(checkpoint.batch_id);
            }
            self.jobs.lock().expect("jobs lock").insert(
                record.job_id.clone(),
                JobEntry {
                    shared,
                    handle: None,
                },
            );
        }
        Ok(())
    }

    /// Starts a job's loop; `planned` is its plan when submit already made it (a resumed
    /// job is planned at its first batch).
    fn start(self: &Arc<Self>, spec: JobSpec, planned: Option<JobRef>) {
        let shared = JobShared::new(spec);
        let job_id = shared.job_id.clone();
        let log = JobLog::new(self.store.clone(), &job_id);
        let runner = JobRunner::new(shared.clone(), log.clone(), self.scheduler.clone(), planned);
        let manager = self.clone();
        let loop_shared = shared.clone();
        let handle = tokio::spawn(async move {
            let (state, message) = runner.run().await;
            manager.finish(&loop_shared, &log, state, message).await;
        });
        self.jobs.lock().expect("jobs lock").insert(
            job_id,
            JobEntry {
                shared,
                handle: Some(handle),
            },
        );
    }

    /// Records a job's end (unless the driver is only shutting down) and tells watchers.
    async fn finish(&self, shared: &JobShared, log: &JobLog, state: JobState, message: String) {
        if state.is_final() {
            let record = JobRecord {
                job_id: shared.job_id.clone(),
                spec_json: shared.spec.to_json(),
                active: false,
                state: state.as_str().into(),
                message: message.clone(),
            };
            // The loop has ended; a failed write only means it resumes on restart.
            if let Err(e) = log.put_job(&record).await {
                warn!(job = %shared.job_id, error = %e, "could not record the job's end");
            }
        }
        shared.set_final(state, &message);
        shared
            .progress
            .publish_end(&shared.job_id, state.as_str(), &message);
        info!(job = %shared.job_id, state = state.as_str(), %message, "job ended");
    }

    fn shared(&self, job_id: &str) -> Result<Arc<JobShared>> {
        self.jobs
            .lock()
            .expect("jobs lock")
            .get(job_id)
            .map(|e| e.shared.clone())
            .ok_or_else(|| Error::UnknownJob(job_id.into()))
    }

    pub fn job(&self, job_id: &str) -> Result<Arc<JobShared>> {
        self.shared(job_id)
    }

    /// Every job this driver knows, by id.
    pub fn jobs(&self) -> Vec<Arc<JobShared>> {
        let mut jobs: Vec<_> = self
            .jobs
            .lock()
            .expect("jobs lock")
            .values()
            .map(|e| e.shared.clone())
            .collect();
        jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        jobs
    }

    pub fn list(&self) -> Vec<JobStatus> {
        let mut jobs: Vec<JobStatus> = self
            .jobs
            .lock()
            .expect("jobs lock")
            .values()
            .map(|e| e.shared.status(1))
            .collect();
        jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        jobs
    }

    /// Stops a job after its running batch commits; returns once it has stopped. A driver
    /// deposed without knowing it yet (just resumed from a pause) refuses: the new leader
    /// runs the job, and stopping only this driver's loop would leave it running there.
    pub async fn stop(&self, job_id: &str) -> Result<()> {
        self.store.check_fence().await?;
        let (shared, handle) = {
            let mut jobs = self.jobs.lock().expect("jobs lock");
            let entry = jobs
                .get_mut(job_id)
                .ok_or_else(|| Error::UnknownJob(job_id.into()))?;
            (entry.shared.clone(), entry.handle.take())
        };
        shared.request_stop(StopRequest::User);
        if let Some(handle) = handle {
            let _ = handle.await;
        }
        Ok(())
    }

    /// Cancels every job's loop at once, committing nothing more: this driver lost its
    /// leadership and the new leader runs the jobs. Returns when all loops ended.
    pub async fn abort_all(&self) {
        let handles: Vec<_> = {
            let mut jobs = self.jobs.lock().expect("jobs lock");
            jobs.values_mut().filter_map(|e| e.handle.take()).collect()
        };
        for handle in &handles {
            handle.abort();
        }
        for handle in handles {
            let _ = handle.await;
        }
    }

    /// Lets every job finish its running batch and returns when all loops ended.
    pub async fn shutdown(&self) {
        let handles: Vec<_> = {
            let mut jobs = self.jobs.lock().expect("jobs lock");
            jobs.values_mut()
                .filter_map(|e| {
                    e.shared.request_stop(StopRequest::DriverShutdown);
                    e.handle.take()
                })
                .collect()
        };
        for handle in handles {
            let _ = handle.await;
        }
    }
}

/// What identifies a job's sink table: catalog address, namespace, table.
fn sink_key(spec: &JobSpec) -> (String, String, String) {
    let sink = &spec.sink.iceberg;
    let uri = sink.catalog.uri.trim_end_matches('/').to_string();
    (uri, sink.namespace.clone(), sink.table.clone())
}

/// Checks that Kafka answers and every named topic exists (a pattern may match no topic
/// yet).
async fn check_kafka(spec: &JobSpec) -> Result<()> {
    let kafka = spec.source().kafka.clone();
    let lookup = tokio::task::spawn_blocking(move || {
        let reader = OffsetReader::connect(&Connection::of(&kafka))?;
        reader.topics(&kafka.topic_matcher()?)?;
        reader.partitions(&kafka.topics)
    });
    match tokio::time::timeout(SUBMIT_KAFKA_TIMEOUT, lookup).await {
        Ok(Ok(result)) => result.map(|_| ()).map_err(Error::from),
        Ok(Err(e)) => Err(Error::Timeout {
            what: format!("Kafka lookup ({e})"),
            seconds: 0,
        }),
        Err(_) => Err(Error::Timeout {
            what: format!("Kafka at {}", spec.source().kafka.bootstrap_servers),
            seconds: SUBMIT_KAFKA_TIMEOUT.as_secs(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::batch::tests::MemoryStore;
    use crate::registry::Registry;

    /// A stop sent to a deposed driver is refused as unavailable (the client tries the
    /// leader), not taken for the job.
    #[tokio::test]
    async fn a_deposed_driver_refuses_a_stop_as_not_the_leader() {
        let store = Arc::new(MemoryStore::default());
        store.deposed.store(true, Ordering::SeqCst);
        let registry = Arc::new(Registry::new(
            Duration::from_secs(1),
            Default::default(),
            sluice_proto::tls::Tls::none(),
        ));
        let manager = JobManager::new(store, Scheduler::new(registry, Duration::from_secs(1)), 1);
        let refused = manager.stop("orders").await.unwrap_err();
        assert!(matches!(refused, Error::Fenced { .. }), "{refused}");
        assert_eq!(
            tonic::Status::from(refused).code(),
            tonic::Code::Unavailable
        );
    }
}
