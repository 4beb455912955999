//! The Arrow Flight side of the shuffle: serving this executor's map outputs (`do_get`
//! with a ticket naming job, batch, stage, map task and partition) and fetching other
//! executors' outputs for reduce tasks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightClient, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use sluice_plan::{ShuffleFetchError, ShuffleFetcher, ShuffleKey};
use sluice_proto::tls::Tls;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::shuffle_store::{ShuffleStore, ShuffleStoreError};

/// Serves map outputs from the [`ShuffleStore`].
pub struct FlightShuffleService {
    store: Arc<ShuffleStore>,
}

impl FlightShuffleService {
    pub fn new(store: Arc<ShuffleStore>) -> FlightShuffleService {
        FlightShuffleService { store }
    }
}

fn unsupported<T>(what: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not offered: executors serve shuffle partitions with do_get only"
    )))
}

#[async_trait]
impl FlightService for FlightShuffleService {
    type HandshakeStream = BoxStream<'static, Result<HandshakeResponse, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = BoxStream<'static, Result<PutResult, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let ticket = request.into_inner().ticket;
        let key: ShuffleKey = serde_json::from_slice(&ticket).map_err(|e| {
            Status::invalid_argument(format!("the ticket is not a shuffle key: {e}"))
        })?;
        let (schema, batches) = self.store.get(&key).map_err(|e| match e {
            ShuffleStoreError::Missing { .. } | ShuffleStoreError::NoPartition { .. } => {
                Status::not_found(e.to_string())
            }
            ShuffleStoreError::Spill { .. } => Status::internal(e.to_string()),
        })?;
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::iter(batches.into_iter().map(Ok)))
            .map_err(|e| Status::internal(e.to_string()));
        Ok(Response::new(stream.boxed()))
    }

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        unsupported("handshake")
    }

    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        unsupported("list_flights")
    }

    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        unsupported("get_flight_info")
    }

    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        unsupported("poll_flight_info")
    }

    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        unsupported("get_schema")
    }

    async fn do_put(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        unsupported("do_put")
    }

    async fn do_exchange(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        unsupported("do_exchange")
    }

    async fn do_action(
        &self,
        _: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        unsupported("do_action")
    }

    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        unsupported("list_actions")
    }
}

/// Fetches partitions over Arrow Flight, one channel per executor address.
#[derive(Debug, Default)]
pub struct FlightFetcher {
    channels: Mutex<HashMap<String, Channel>>,
    /// `Bearer <token>` presented to other executors (the cluster token), if any.
    authorization: Option<String>,
    /// Verifies executors serving `https://` (and presents this one's certificate).
    tls: Tls,
}

impl FlightFetcher {
    /// A fetcher presenting the first of `tokens` to other executors, over `tls` where
    /// they serve it.
    pub fn new(tokens: Option<&Vec<String>>, tls: Tls) -> FlightFetcher {
        FlightFetcher {
            tls,
            channels: Mutex::new(HashMap::new()),
            authorization: tokens
                .and_then(|t| t.first())
                .map(|token| format!("Bearer {token}")),
        }
    }

    fn channel(&self, address: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().expect("channels lock");
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = self
            .tls
            .endpoint(address)
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    async fn fetch_batches(
        &self,
        address: &str,
        key: &ShuffleKey,
    ) -> Result<Vec<RecordBatch>, String> {
        let ticket = serde_json::to_vec(key).map_err(|e| e.to_string())?;
        let mut client = FlightClient::new(self.channel(address)?);
        if let Some(authorization) = &self.authorization {
            client
                .add_header("authorization", authorization)
                .map_err(describe)?;
        }
        let stream = client.do_get(Ticket::new(ticket)).await.map_err(describe)?;
        stream.try_collect().await.map_err(describe)
    }
}

fn describe(error: FlightError) -> String {
    match error {
        FlightError::Tonic(status) => format!("{}: {}", status.code(), status.message()),
        other => other.to_string(),
    }
}

#[async_trait]
impl ShuffleFetcher for FlightFetcher {
    async fn fetch(
        &self,
        address: &str,
        key: &ShuffleKey,
    ) -> Result<Vec<RecordBatch>, ShuffleFetchError> {
        let result = self.fetch_batches(address, key).await;
        if result.is_err() {
            // A broken connection is not reused for the next attempt.
            self.channels.lock().expect("channels lock").remove(address);
        }
        result.map_err(|message| ShuffleFetchError {
            stage_id: key.stage_id,
            map_task: key.map_task,
            partition: key.partition,
            address: address.to_string(),
            message,
        })
    }
}
