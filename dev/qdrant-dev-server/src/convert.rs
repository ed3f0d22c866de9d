//! Conversions between Qdrant's gRPC messages and qdrant-edge's engine types (points,
//! vectors, payloads, selectors, errors). Filters have their own module.

use std::collections::HashMap;
use std::fmt::Display;

use qdrant_client::qdrant as pb;
use qdrant_edge::external::uuid::Uuid;
use qdrant_edge::{
    Direction, Distance, JsonPath, OperationError, OrderBy, OrderValue, Payload, PayloadSchemaType,
    PayloadSelector, PayloadSelectorExclude, PayloadSelectorInclude, PointId, Record, ScoredPoint, StartFrom,
    VectorInternal, VectorPersisted, VectorStructInternal, VectorStructPersisted, WithPayloadInterface,
    WithVector, DEFAULT_VECTOR_NAME,
};
use tonic::Status;

/// The error for a part of Qdrant's API this server deliberately leaves out.
pub fn unsupported(what: impl Display) -> Status {
    Status::unimplemented(format!(
        "qdrant-dev-server does not support {what} (see dev/qdrant-dev-server/README.md; \
         set QDRANT_URL to use a real Qdrant)"
    ))
}

/// Maps an engine error to the gRPC status Qdrant would use for it.
pub fn engine_error(context: impl Display, err: OperationError) -> Status {
    let message = format!("{context}: {err}");
    match err {
        OperationError::WrongVectorDimension { .. }
        | OperationError::VectorNameNotExists { .. }
        | OperationError::TypeError { .. }
        | OperationError::TypeInferenceError { .. }
        | OperationError::ValidationError { .. }
        | OperationError::WrongSparse
        | OperationError::WrongMulti
        | OperationError::MissingRangeIndexForOrderBy { .. }
        | OperationError::MissingMapIndexForFacet { .. }
        | OperationError::VariableTypeError { .. }
        | OperationError::NonFiniteNumber { .. } => Status::invalid_argument(message),
        OperationError::PointIdError { .. } => Status::not_found(message),
        OperationError::Cancelled { .. } => Status::cancelled(message),
        OperationError::Timeout { .. } => Status::deadline_exceeded(message),
        OperationError::OutOfMemory { .. } => Status::resource_exhausted(message),
        _ => Status::internal(message),
    }
}

/// Parses a payload key such as `user_id` or `meta.tags[]`.
pub fn json_path(key: &str) -> Result<JsonPath, Status> {
    key.parse().map_err(|_| Status::invalid_argument(format!("`{key}` is not a valid payload key")))
}

/// A point id from the wire: an unsigned integer or a UUID string.
pub fn point_id_from_pb(id: Option<pb::PointId>) -> Result<PointId, Status> {
    match id.and_then(|id| id.point_id_options) {
        Some(pb::point_id::PointIdOptions::Num(num)) => Ok(PointId::NumId(num)),
        Some(pb::point_id::PointIdOptions::Uuid(text)) => Uuid::parse_str(&text)
            .map(PointId::Uuid)
            .map_err(|err| Status::invalid_argument(format!("`{text}` is not a UUID: {err}"))),
        None => Err(Status::invalid_argument("point id is missing")),
    }
}

/// Point ids from the wire.
pub fn point_ids_from_pb(ids: Vec<pb::PointId>) -> Result<Vec<PointId>, Status> {
    ids.into_iter().map(|id| point_id_from_pb(Some(id))).collect()
}

/// A point id for the wire.
pub fn point_id_to_pb(id: PointId) -> pb::PointId {
    let options = match id {
        PointId::NumId(num) => pb::point_id::PointIdOptions::Num(num),
        PointId::Uuid(uuid) => pb::point_id::PointIdOptions::Uuid(uuid.to_string()),
    };
    pb::PointId { point_id_options: Some(options) }
}

/// A payload from the wire.
pub fn payload_from_pb(payload: HashMap<String, pb::Value>) -> Payload {
    Payload(payload.into_iter().map(|(key, value)| (key, serde_json::Value::from(value))).collect())
}

/// A payload for the wire; no payload is an empty map, as in Qdrant.
pub fn payload_to_pb(payload: Option<Payload>) -> HashMap<String, pb::Value> {
    payload
        .map(|payload| payload.0.into_iter().map(|(key, value)| (key, pb::Value::from(value))).collect())
        .unwrap_or_default()
}

/// A point's vectors from the wire: one unnamed dense vector, or named dense vectors.
pub fn vectors_from_pb(vectors: Option<pb::Vectors>) -> Result<VectorStructPersisted, Status> {
    match vectors.and_then(|v| v.vectors_options) {
        Some(pb::vectors::VectorsOptions::Vector(vector)) => {
            Ok(VectorStructPersisted::Single(dense_from_pb(vector)?))
        }
        Some(pb::vectors::VectorsOptions::Vectors(named)) => named
            .vectors
            .into_iter()
            .map(|(name, vector)| Ok((name, VectorPersisted::Dense(dense_from_pb(vector)?))))
            .collect::<Result<HashMap<_, _>, Status>>()
            .map(VectorStructPersisted::Named),
        None => Err(Status::invalid_argument("point has no vectors")),
    }
}

/// A dense vector from the wire, in either the current or the deprecated encoding
/// (clients older than 1.16 still send `data`).
fn dense_from_pb(vector: pb::Vector) -> Result<Vec<f32>, Status> {
    #[allow(deprecated)]
    let pb::Vector { data, indices, vectors_count, vector } = vector;
    match vector {
        Some(pb::vector::Vector::Dense(dense)) => Ok(dense.data),
        Some(pb::vector::Vector::Sparse(_)) => Err(unsupported("sparse vectors")),
        Some(pb::vector::Vector::MultiDense(_)) => Err(unsupported("multi-vectors")),
        Some(
            pb::vector::Vector::Document(_) | pb::vector::Vector::Image(_) | pb::vector::Vector::Object(_),
        ) => Err(unsupported("server-side inference (documents, images, objects)")),
        None if indices.is_some() => Err(unsupported("sparse vectors")),
        None if vectors_count.is_some_and(|count| count > 1) => Err(unsupported("multi-vectors")),
        None => Ok(data),
    }
}

/// Stored vectors for the wire. A map holding only the unnamed vector is sent as a
/// single vector, as Qdrant does.
pub fn vectors_to_pb(vectors: Option<VectorStructInternal>) -> Option<pb::VectorsOutput> {
    let options = match vectors? {
        VectorStructInternal::Single(dense) => pb::vectors_output::VectorsOptions::Vector(dense_to_pb(dense)),
        VectorStructInternal::Named(mut named) => {
            if named.len() == 1 {
                if let Some(VectorInternal::Dense(dense)) = named.remove(DEFAULT_VECTOR_NAME) {
                    return Some(pb::VectorsOutput {
                        vectors_options: Some(pb::vectors_output::VectorsOptions::Vector(dense_to_pb(dense))),
                    });
                }
            }
            let vectors = named
                .into_iter()
                .filter_map(|(name, vector)| match vector {
                    VectorInternal::Dense(dense) => Some((name, dense_to_pb(dense))),
                    // Collections here only ever hold dense vectors (see create).
                    VectorInternal::Sparse(_) | VectorInternal::MultiDense(_) => None,
                })
                .collect();
            pb::vectors_output::VectorsOptions::Vectors(pb::NamedVectorsOutput { vectors })
        }
        // Collections here only ever hold dense vectors (see create).
        VectorStructInternal::MultiDense(_) => return None,
    };
    Some(pb::VectorsOutput { vectors_options: Some(options) })
}

fn dense_to_pb(data: Vec<f32>) -> pb::VectorOutput {
    pb::VectorOutput {
        vector: Some(pb::vector_output::Vector::Dense(pb::DenseVector { data })),
        ..Default::default()
    }
}

/// Which payload to return; `default` applies when the request does not say.
pub fn with_payload_from_pb(
    selector: Option<pb::WithPayloadSelector>,
    default: bool,
) -> Result<WithPayloadInterface, Status> {
    use pb::with_payload_selector::SelectorOptions;
    Ok(match selector.and_then(|s| s.selector_options) {
        None => WithPayloadInterface::Bool(default),
        Some(SelectorOptions::Enable(enable)) => WithPayloadInterface::Bool(enable),
        Some(SelectorOptions::Include(include)) => {
            let include = include.fields.iter().map(|f| json_path(f)).collect::<Result<_, _>>()?;
            WithPayloadInterface::Selector(PayloadSelector::Include(PayloadSelectorInclude::new(include)))
        }
        Some(SelectorOptions::Exclude(exclude)) => {
            let exclude = exclude.fields.iter().map(|f| json_path(f)).collect::<Result<_, _>>()?;
            WithPayloadInterface::Selector(PayloadSelector::Exclude(PayloadSelectorExclude::new(exclude)))
        }
    })
}

/// Which vectors to return; none unless asked for.
pub fn with_vectors_from_pb(selector: Option<pb::WithVectorsSelector>) -> WithVector {
    use pb::with_vectors_selector::SelectorOptions;
    match selector.and_then(|s| s.selector_options) {
        None => WithVector::Bool(false),
        Some(SelectorOptions::Enable(enable)) => WithVector::Bool(enable),
        Some(SelectorOptions::Include(include)) => WithVector::Selector(include.names),
    }
}

/// A distance from the wire.
pub fn distance_from_pb(distance: i32) -> Result<Distance, Status> {
    match pb::Distance::try_from(distance) {
        Ok(pb::Distance::Cosine) => Ok(Distance::Cosine),
        Ok(pb::Distance::Dot) => Ok(Distance::Dot),
        Ok(pb::Distance::Euclid) => Ok(Distance::Euclid),
        Ok(pb::Distance::Manhattan) => Ok(Distance::Manhattan),
        Ok(pb::Distance::UnknownDistance) | Err(_) => Err(Status::invalid_argument(format!(
            "unknown distance {distance}: use Cosine, Dot, Euclid or Manhattan"
        ))),
    }
}

/// A distance for the wire.
pub fn distance_to_pb(distance: Distance) -> pb::Distance {
    match distance {
        Distance::Cosine => pb::Distance::Cosine,
        Distance::Dot => pb::Distance::Dot,
        Distance::Euclid => pb::Distance::Euclid,
        Distance::Manhattan => pb::Distance::Manhattan,
    }
}

/// A payload index type from the wire (`CreateFieldIndex`'s `field_type`, or failing
/// that the kind of its index params).
pub fn field_type_from_pb(
    field_type: Option<i32>,
    params: Option<&pb::PayloadIndexParams>,
) -> Result<PayloadSchemaType, Status> {
    use pb::payload_index_params::IndexParams;
    if let Some(field_type) = field_type {
        return match pb::FieldType::try_from(field_type) {
            Ok(pb::FieldType::Keyword) => Ok(PayloadSchemaType::Keyword),
            Ok(pb::FieldType::Integer) => Ok(PayloadSchemaType::Integer),
            Ok(pb::FieldType::Float) => Ok(PayloadSchemaType::Float),
            Ok(pb::FieldType::Geo) => Ok(PayloadSchemaType::Geo),
            Ok(pb::FieldType::Text) => Ok(PayloadSchemaType::Text),
            Ok(pb::FieldType::Bool) => Ok(PayloadSchemaType::Bool),
            Ok(pb::FieldType::Datetime) => Ok(PayloadSchemaType::Datetime),
            Ok(pb::FieldType::Uuid) => Ok(PayloadSchemaType::Uuid),
            Err(_) => Err(Status::invalid_argument(format!("unknown field type {field_type}"))),
        };
    }
    match params.and_then(|p| p.index_params.as_ref()) {
        Some(IndexParams::KeywordIndexParams(_)) => Ok(PayloadSchemaType::Keyword),
        Some(IndexParams::IntegerIndexParams(_)) => Ok(PayloadSchemaType::Integer),
        Some(IndexParams::FloatIndexParams(_)) => Ok(PayloadSchemaType::Float),
        Some(IndexParams::GeoIndexParams(_)) => Ok(PayloadSchemaType::Geo),
        Some(IndexParams::TextIndexParams(_)) => Ok(PayloadSchemaType::Text),
        Some(IndexParams::BoolIndexParams(_)) => Ok(PayloadSchemaType::Bool),
        Some(IndexParams::DatetimeIndexParams(_)) => Ok(PayloadSchemaType::Datetime),
        Some(IndexParams::UuidIndexParams(_)) => Ok(PayloadSchemaType::Uuid),
        None => Err(Status::invalid_argument("field index needs a field_type (or index params)")),
    }
}

/// A payload index type for the wire.
pub fn field_type_to_pb(schema: PayloadSchemaType) -> pb::PayloadSchemaType {
    match schema {
        PayloadSchemaType::Keyword => pb::PayloadSchemaType::Keyword,
        PayloadSchemaType::Integer => pb::PayloadSchemaType::Integer,
        PayloadSchemaType::Float => pb::PayloadSchemaType::Float,
        PayloadSchemaType::Geo => pb::PayloadSchemaType::Geo,
        PayloadSchemaType::Text => pb::PayloadSchemaType::Text,
        PayloadSchemaType::Bool => pb::PayloadSchemaType::Bool,
        PayloadSchemaType::Datetime => pb::PayloadSchemaType::Datetime,
        PayloadSchemaType::Uuid => pb::PayloadSchemaType::Uuid,
    }
}

/// An `order_by` from the wire.
pub fn order_by_from_pb(order_by: pb::OrderBy) -> Result<OrderBy, Status> {
    let direction = match order_by.direction.map(pb::Direction::try_from) {
        None => None,
        Some(Ok(pb::Direction::Asc)) => Some(Direction::Asc),
        Some(Ok(pb::Direction::Desc)) => Some(Direction::Desc),
        Some(Err(_)) => return Err(Status::invalid_argument("unknown order_by direction")),
    };
    let start_from = match order_by.start_from.and_then(|s| s.value) {
        None => None,
        Some(pb::start_from::Value::Integer(i)) => Some(StartFrom::Integer(i)),
        Some(pb::start_from::Value::Float(f)) => Some(StartFrom::Float(f)),
        Some(pb::start_from::Value::Timestamp(ts)) => Some(datetime_start(ts.to_string())?),
        Some(pb::start_from::Value::Datetime(text)) => Some(datetime_start(text)?),
    };
    Ok(OrderBy { key: json_path(&order_by.key)?, direction, start_from })
}

/// The engine parses datetimes (RFC 3339 and the other formats Qdrant accepts) when
/// deserialising, so go through its serde form rather than re-implementing that.
fn datetime_start(text: String) -> Result<StartFrom, Status> {
    serde_json::from_value(serde_json::Value::String(text.clone()))
        .map_err(|err| Status::invalid_argument(format!("`{text}` is not a datetime: {err}")))
}

fn order_value_to_pb(value: OrderValue) -> pb::OrderValue {
    let variant = match value {
        OrderValue::Int(i) => pb::order_value::Variant::Int(i),
        OrderValue::Float(f) => pb::order_value::Variant::Float(f),
    };
    pb::OrderValue { variant: Some(variant) }
}

/// A search/query hit for the wire.
pub fn scored_point_to_pb(point: ScoredPoint) -> pb::ScoredPoint {
    pb::ScoredPoint {
        id: Some(point_id_to_pb(point.id)),
        payload: payload_to_pb(point.payload),
        score: point.score,
        version: point.version,
        vectors: vectors_to_pb(point.vector),
        shard_key: None,
        order_value: point.order_value.map(order_value_to_pb),
    }
}

/// A stored point for the wire.
pub fn record_to_pb(record: Record) -> pb::RetrievedPoint {
    pb::RetrievedPoint {
        id: Some(point_id_to_pb(record.id)),
        payload: payload_to_pb(record.payload),
        vectors: vectors_to_pb(record.vector),
        shard_key: None,
        order_value: record.order_value.map(order_value_to_pb),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_ids_round_trip() {
        let uuid = "5c56c793-69f3-4fbf-87e6-c4bf54c28c26";
        for id in [pb::PointId::from(7_u64), pb::PointId::from(uuid.to_string())] {
            let edge = point_id_from_pb(Some(id.clone())).expect("valid id");
            assert_eq!(point_id_to_pb(edge), id);
        }
        assert!(point_id_from_pb(Some(pb::PointId::from("nope".to_string()))).is_err());
        assert!(point_id_from_pb(None).is_err());
    }

    #[test]
    fn deprecated_dense_encoding_is_accepted_and_sparse_is_refused() {
        #[allow(deprecated)]
        let old = pb::Vector { data: vec![1.0, 2.0], ..Default::default() };
        let parsed = vectors_from_pb(Some(pb::Vectors::from(old))).expect("dense");
        assert!(matches!(parsed, VectorStructPersisted::Single(v) if v == vec![1.0, 2.0]));

        let sparse = pb::Vector::new_sparse(vec![1_u32], vec![0.5]);
        let err = vectors_from_pb(Some(pb::Vectors::from(sparse))).expect_err("sparse");
        assert_eq!(err.code(), tonic::Code::Unimplemented);
    }

    #[test]
    fn payload_round_trips_through_the_engine_form() {
        let json = serde_json::json!({"user_id": "a", "ts": 42, "tags": ["x"], "nested": {"k": true}});
        let pb_payload: HashMap<String, pb::Value> = match json.clone() {
            serde_json::Value::Object(map) => map.into_iter().map(|(k, v)| (k, pb::Value::from(v))).collect(),
            _ => unreachable!("literal is an object"),
        };
        let edge = payload_from_pb(pb_payload.clone());
        assert_eq!(serde_json::Value::Object(edge.0.clone()), json);
        assert_eq!(payload_to_pb(Some(edge)), pb_payload);
    }
}
