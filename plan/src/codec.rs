//! Serializing Sluice's own operators inside datafusion-proto physical plans.

use std::sync::Arc;

use arrow::datatypes::Schema;
use datafusion::common::{exec_err, DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{
    AsExecutionPlan, DefaultPhysicalExtensionCodec, PhysicalExtensionCodec,
};
use datafusion_proto::protobuf::{self, PhysicalPlanNode};
use prost::Message;

use super::nodes::{KafkaScanExec, ReaderMode, ShuffleReaderExec};
use crate::stateful::{FirstRowPerKeyExec, OrderColumn};

const KAFKA_SCAN: u32 = 1;
const SHUFFLE_READER: u32 = 2;
const FIRST_ROW_PER_KEY: u32 = 3;

/// The payload of one of Sluice's operators in a serialized plan.
#[derive(Clone, PartialEq, Message)]
struct SluiceNode {
    #[prost(uint32, tag = "1")]
    operator: u32,
    #[prost(message, optional, tag = "2")]
    schema: Option<protobuf::Schema>,
    #[prost(uint32, tag = "3")]
    partitions: u32,
    #[prost(uint32, tag = "4")]
    stage_id: u32,
    #[prost(bool, tag = "5")]
    merged: bool,
    /// First row per key: the key columns, and the order's columns with their direction.
    #[prost(string, repeated, tag = "6")]
    key: Vec<String>,
    #[prost(string, repeated, tag = "7")]
    order: Vec<String>,
    #[prost(bool, repeated, tag = "8")]
    descending: Vec<bool>,
    #[prost(bool, repeated, tag = "9")]
    nulls_first: Vec<bool>,
}

/// Encodes and decodes [`KafkaScanExec`], [`ShuffleReaderExec`] and
/// [`FirstRowPerKeyExec`].
#[derive(Debug, Default)]
pub struct SluiceCodec;

impl PhysicalExtensionCodec for SluiceCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let node = SluiceNode::decode(buf).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let Some(schema) = node.schema.as_ref() else {
            return exec_err!("a Sluice operator without a schema");
        };
        let schema = Arc::new(Schema::try_from(schema)?);
        match node.operator {
            KAFKA_SCAN => Ok(Arc::new(KafkaScanExec::new(
                schema,
                node.partitions as usize,
            ))),
            SHUFFLE_READER => {
                let mode = if node.merged {
                    ReaderMode::Merged
                } else {
                    ReaderMode::Hash
                };
                Ok(Arc::new(ShuffleReaderExec::new(
                    node.stage_id,
                    schema,
                    mode,
                    node.partitions as usize,
                )))
            }
            FIRST_ROW_PER_KEY => {
                let [input] = inputs else {
                    return exec_err!("FirstRowPerKeyExec has one input");
                };
                let order = node
                    .order
                    .iter()
                    .zip(&node.descending)
                    .zip(&node.nulls_first)
                    .map(|((name, descending), nulls_first)| OrderColumn {
                        name: name.clone(),
                        descending: *descending,
                        nulls_first: *nulls_first,
                    })
                    .collect();
                Ok(Arc::new(FirstRowPerKeyExec::try_new(
                    input.clone(),
                    node.key.clone(),
                    order,
                    schema,
                )?))
            }
            other => exec_err!("unknown Sluice operator {other}"),
        }
    }

    fn try_encode(&self, node: Arc<dyn ExecutionPlan>, buf: &mut Vec<u8>) -> Result<()> {
        let schema = Some(protobuf::Schema::try_from(node.schema().as_ref())?);
        let encoded = if let Some(scan) = node.as_any().downcast_ref::<KafkaScanExec>() {
            SluiceNode {
                operator: KAFKA_SCAN,
                schema,
                partitions: scan.partitions() as u32,
                ..Default::default()
            }
        } else if let Some(reader) = node.as_any().downcast_ref::<ShuffleReaderExec>() {
            SluiceNode {
                operator: SHUFFLE_READER,
                schema,
                partitions: reader.partitions() as u32,
                stage_id: reader.stage_id(),
                merged: reader.mode() == ReaderMode::Merged,
                ..Default::default()
            }
        } else if let Some(first) = node.as_any().downcast_ref::<FirstRowPerKeyExec>() {
            SluiceNode {
                operator: FIRST_ROW_PER_KEY,
                schema,
                key: first.key().to_vec(),
                order: first.order().iter().map(|o| o.name.clone()).collect(),
                descending: first.order().iter().map(|o| o.descending).collect(),
                nulls_first: first.order().iter().map(|o| o.nulls_first).collect(),
                ..Default::default()
            }
        } else {
            return DefaultPhysicalExtensionCodec {}.try_encode(node, buf);
        };
        encoded
            .encode(buf)
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

/// A stage plan as bytes.
pub fn encode_plan(plan: Arc<dyn ExecutionPlan>) -> Result<Vec<u8>> {
    let node = PhysicalPlanNode::try_from_physical_plan(plan, &SluiceCodec)?;
    Ok(node.encode_to_vec())
}

/// A stage plan from bytes; every call builds fresh operators (they keep per-run state).
pub fn decode_plan(bytes: &[u8], context: &TaskContext) -> Result<Arc<dyn ExecutionPlan>> {
    let node =
        PhysicalPlanNode::decode(bytes).map_err(|e| DataFusionError::External(Box::new(e)))?;
    node.try_into_physical_plan(context, &SluiceCodec)
}
