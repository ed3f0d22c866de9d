//! Conversions between Qdrant's REST JSON and the engine's types where serde cannot do
//! it alone: vectors in both directions, points and hits out. Filters, point ids,
//! payloads and payload/vector selectors are already in the engine's serde form.

use std::collections::HashMap;

use qdrant_edge::{
    OrderValue, Payload, PointId, Record, ScoredPoint, VectorInternal, VectorPersisted, VectorStructInternal,
    VectorStructPersisted, DEFAULT_VECTOR_NAME,
};
use serde::Serialize;
use serde_json::Value;
use tonic::Status;

use crate::convert::unsupported;

/// A dense vector: an array of numbers. `what` names it in errors.
pub fn dense_vector(value: &Value, what: &str) -> Result<Vec<f32>, Status> {
    let Value::Array(items) = value else {
        return Err(match value {
            Value::Object(map) if map.contains_key("indices") => unsupported("sparse vectors"),
            Value::Object(map) if map.contains_key("text") || map.contains_key("image") => {
                unsupported("server-side inference (documents, images, objects)")
            }
            _ => Status::invalid_argument(format!("{what} must be an array of numbers, got {value}")),
        });
    };
    items
        .iter()
        .map(|item| match item {
            Value::Number(n) => n.as_f64().map(|f| f as f32).ok_or_else(|| bad_number(what, item)),
            Value::Array(_) => Err(unsupported("multi-vectors")),
            _ => Err(bad_number(what, item)),
        })
        .collect()
}

fn bad_number(what: &str, item: &Value) -> Status {
    Status::invalid_argument(format!("{what} must be an array of numbers, found {item}"))
}

/// A point's vectors: one unnamed dense vector (`[…]`) or named ones (`{"name": […]}`).
pub fn point_vectors(value: &Value) -> Result<VectorStructPersisted, Status> {
    match value {
        Value::Object(named) if !named.contains_key("indices") => named
            .iter()
            .map(|(name, vector)| {
                let dense = dense_vector(vector, &format!("vector `{name}`"))?;
                Ok((name.clone(), VectorPersisted::Dense(dense)))
            })
            .collect::<Result<HashMap<_, _>, Status>>()
            .map(VectorStructPersisted::Named),
        _ => dense_vector(value, "vector").map(VectorStructPersisted::Single),
    }
}

/// The vectors of a batch upsert, one per id: `[[…], […]]` or `{"name": [[…], […]]}`.
pub fn batch_vectors(value: &Value, count: usize) -> Result<Vec<VectorStructPersisted>, Status> {
    let per_point = |vectors: &Vec<Value>, name: &str| -> Result<Vec<Vec<f32>>, Status> {
        if vectors.len() != count {
            return Err(Status::invalid_argument(format!(
                "batch has {count} ids but {} vectors{name}",
                vectors.len()
            )));
        }
        vectors.iter().map(|v| dense_vector(v, "batch vector")).collect()
    };
    match value {
        Value::Array(vectors) => {
            Ok(per_point(vectors, "")?.into_iter().map(VectorStructPersisted::Single).collect())
        }
        Value::Object(named) => {
            let mut points: Vec<HashMap<String, VectorPersisted>> = vec![HashMap::new(); count];
            for (name, vectors) in named {
                let Value::Array(vectors) = vectors else {
                    return Err(Status::invalid_argument(format!(
                        "batch vectors `{name}` must be an array of vectors"
                    )));
                };
                for (point, dense) in points.iter_mut().zip(per_point(vectors, &format!(" named `{name}`"))?)
                {
                    point.insert(name.clone(), VectorPersisted::Dense(dense));
                }
            }
            Ok(points.into_iter().map(VectorStructPersisted::Named).collect())
        }
        _ => Err(Status::invalid_argument("batch vectors must be an array or an object of arrays")),
    }
}

/// Stored vectors as Qdrant shows them: a map holding only the unnamed vector is a
/// plain array.
pub fn vectors_out(vectors: VectorStructInternal) -> Option<Value> {
    let dense = |data: Vec<f32>| Value::from(data);
    match vectors {
        VectorStructInternal::Single(data) => Some(dense(data)),
        VectorStructInternal::Named(mut named) => {
            if named.len() == 1 {
                if let Some(VectorInternal::Dense(data)) = named.remove(DEFAULT_VECTOR_NAME) {
                    return Some(dense(data));
                }
            }
            let map = named
                .into_iter()
                .filter_map(|(name, vector)| match vector {
                    VectorInternal::Dense(data) => Some((name, dense(data))),
                    // Collections here only ever hold dense vectors (see create).
                    VectorInternal::Sparse(_) | VectorInternal::MultiDense(_) => None,
                })
                .collect();
            Some(Value::Object(map))
        }
        // Collections here only ever hold dense vectors (see create).
        VectorStructInternal::MultiDense(_) => None,
    }
}

/// A stored point as Qdrant's REST API shows it (`Record`).
#[derive(Serialize)]
pub struct RecordOut {
    id: PointId,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Payload>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vector: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_value: Option<OrderValue>,
}

impl From<Record> for RecordOut {
    fn from(record: Record) -> Self {
        Self {
            id: record.id,
            payload: record.payload,
            vector: record.vector.and_then(vectors_out),
            order_value: record.order_value,
        }
    }
}

/// A search or query hit as Qdrant's REST API shows it (`ScoredPoint`).
#[derive(Serialize)]
pub struct ScoredOut {
    id: PointId,
    version: u64,
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Payload>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vector: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_value: Option<OrderValue>,
}

impl From<ScoredPoint> for ScoredOut {
    fn from(point: ScoredPoint) -> Self {
        Self {
            id: point.id,
            version: point.version,
            score: point.score,
            payload: point.payload,
            vector: point.vector.and_then(vectors_out),
            order_value: point.order_value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn point_vectors_accept_plain_and_named_and_refuse_sparse() {
        assert!(
            matches!(point_vectors(&json!([0.1, 2])), Ok(VectorStructPersisted::Single(v)) if v == vec![0.1, 2.0])
        );
        let Ok(VectorStructPersisted::Named(named)) =
            point_vectors(&json!({"image": [1.0], "text": [2.0, 3.0]}))
        else {
            panic!("named vectors must parse");
        };
        assert_eq!(named.len(), 2);
        let sparse = point_vectors(&json!({"indices": [1], "values": [0.5]})).expect_err("sparse");
        assert_eq!(sparse.code(), tonic::Code::Unimplemented);
        let bad = point_vectors(&json!(["a"])).expect_err("strings");
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn batch_vectors_must_match_the_ids() {
        assert_eq!(batch_vectors(&json!([[1.0], [2.0]]), 2).expect("two vectors").len(), 2);
        assert!(batch_vectors(&json!([[1.0]]), 2).is_err());
        let named = batch_vectors(&json!({"a": [[1.0], [2.0]]}), 2).expect("named");
        assert!(matches!(&named[1], VectorStructPersisted::Named(m) if m.contains_key("a")));
    }

    #[test]
    fn only_the_unnamed_vector_is_shown_as_an_array() {
        let unnamed = VectorStructInternal::Named(HashMap::from([(
            DEFAULT_VECTOR_NAME.to_owned(),
            VectorInternal::Dense(vec![1.0]),
        )]));
        assert_eq!(vectors_out(unnamed), Some(json!([1.0])));
        let named =
            VectorStructInternal::Named(HashMap::from([("a".to_owned(), VectorInternal::Dense(vec![1.0]))]));
        assert_eq!(vectors_out(named), Some(json!({"a": [1.0]})));
    }
}
