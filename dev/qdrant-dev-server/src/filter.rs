//! Payload filters: Qdrant's protobuf `Filter` to qdrant-edge's `Filter`.
//!
//! The protobuf filter is rewritten into Qdrant's REST (JSON) filter form, which the
//! engine's `Filter` deserialises. That form is Qdrant's documented public schema, and
//! going through it keeps the engine's own parsing and checks (datetime formats,
//! geo validation, id parsing) instead of duplicating them here.

use qdrant_client::qdrant as pb;
use qdrant_edge::external::uuid::Uuid;
use qdrant_edge::Filter;
use serde_json::{json, Map, Value};
use tonic::Status;

use crate::convert::unsupported;

/// Converts an optional protobuf filter into the engine's filter.
pub fn filter_from_pb(filter: Option<pb::Filter>) -> Result<Option<Filter>, Status> {
    let Some(filter) = filter else {
        return Ok(None);
    };
    let json = filter_json(filter)?;
    serde_json::from_value(json.clone())
        .map(Some)
        .map_err(|err| Status::invalid_argument(format!("invalid filter {json}: {err}")))
}

fn filter_json(filter: pb::Filter) -> Result<Value, Status> {
    let mut object = Map::new();
    // Qdrant treats an empty clause as absent; an empty `should` in the engine's
    // form would match nothing instead.
    for (clause, conditions) in
        [("must", filter.must), ("should", filter.should), ("must_not", filter.must_not)]
    {
        if !conditions.is_empty() {
            object.insert(clause.to_owned(), conditions_json(conditions)?);
        }
    }
    if let Some(min_should) = filter.min_should {
        object.insert(
            "min_should".to_owned(),
            json!({
                "conditions": conditions_json(min_should.conditions)?,
                "min_count": min_should.min_count,
            }),
        );
    }
    Ok(Value::Object(object))
}

fn conditions_json(conditions: Vec<pb::Condition>) -> Result<Value, Status> {
    conditions.into_iter().map(condition_json).collect::<Result<Vec<_>, _>>().map(Value::Array)
}

fn condition_json(condition: pb::Condition) -> Result<Value, Status> {
    use pb::condition::ConditionOneOf;
    match condition.condition_one_of {
        Some(ConditionOneOf::Field(field)) => field_condition_json(field),
        Some(ConditionOneOf::IsEmpty(c)) => Ok(json!({ "is_empty": { "key": c.key } })),
        Some(ConditionOneOf::IsNull(c)) => Ok(json!({ "is_null": { "key": c.key } })),
        Some(ConditionOneOf::HasId(c)) => {
            let ids = c.has_id.into_iter().map(point_id_json).collect::<Result<Vec<_>, _>>()?;
            Ok(json!({ "has_id": ids }))
        }
        Some(ConditionOneOf::Filter(filter)) => filter_json(filter),
        Some(ConditionOneOf::Nested(nested)) => {
            let filter = nested.filter.ok_or_else(|| {
                Status::invalid_argument(format!("nested condition on `{}` has no filter", nested.key))
            })?;
            Ok(json!({ "nested": { "key": nested.key, "filter": filter_json(filter)? } }))
        }
        Some(ConditionOneOf::HasVector(c)) => Ok(json!({ "has_vector": c.has_vector })),
        Some(ConditionOneOf::Slice(_)) => Err(unsupported("the slice filter condition")),
        None => Err(Status::invalid_argument("filter condition is empty")),
    }
}

fn point_id_json(id: pb::PointId) -> Result<Value, Status> {
    match id.point_id_options {
        Some(pb::point_id::PointIdOptions::Num(num)) => Ok(json!(num)),
        Some(pb::point_id::PointIdOptions::Uuid(text)) => {
            // Checked here so the error names the id rather than the whole filter.
            Uuid::parse_str(&text)
                .map_err(|err| Status::invalid_argument(format!("`{text}` is not a UUID: {err}")))?;
            Ok(json!(text))
        }
        None => Err(Status::invalid_argument("has_id contains an empty point id")),
    }
}

fn field_condition_json(field: pb::FieldCondition) -> Result<Value, Status> {
    let mut object = Map::new();
    if let Some(m) = field.r#match {
        object.insert("match".to_owned(), match_json(m)?);
    }
    match (field.range, field.datetime_range) {
        (Some(_), Some(_)) => {
            return Err(Status::invalid_argument(format!(
                "condition on `{}` has both range and datetime_range",
                field.key
            )))
        }
        (Some(range), None) => {
            let bounds = [("lt", range.lt), ("gt", range.gt), ("gte", range.gte), ("lte", range.lte)];
            object.insert("range".to_owned(), bounds_json(bounds));
        }
        (None, Some(range)) => {
            // RFC 3339 strings: the engine's datetime range form.
            let bounds = [
                ("lt", range.lt.map(|t| t.to_string())),
                ("gt", range.gt.map(|t| t.to_string())),
                ("gte", range.gte.map(|t| t.to_string())),
                ("lte", range.lte.map(|t| t.to_string())),
            ];
            object.insert("range".to_owned(), bounds_json(bounds));
        }
        (None, None) => {}
    }
    if let Some(count) = field.values_count {
        let bounds = [("lt", count.lt), ("gt", count.gt), ("gte", count.gte), ("lte", count.lte)];
        object.insert("values_count".to_owned(), bounds_json(bounds));
    }
    if let Some(bbox) = field.geo_bounding_box {
        object.insert(
            "geo_bounding_box".to_owned(),
            json!({
                "top_left": geo_point_json(bbox.top_left)?,
                "bottom_right": geo_point_json(bbox.bottom_right)?,
            }),
        );
    }
    if let Some(radius) = field.geo_radius {
        object.insert(
            "geo_radius".to_owned(),
            json!({ "center": geo_point_json(radius.center)?, "radius": radius.radius }),
        );
    }
    if let Some(polygon) = field.geo_polygon {
        let exterior =
            polygon.exterior.ok_or_else(|| Status::invalid_argument("geo_polygon has no exterior"))?;
        let interiors = polygon.interiors.into_iter().map(line_json).collect::<Result<Vec<_>, _>>()?;
        object.insert(
            "geo_polygon".to_owned(),
            json!({ "exterior": line_json(exterior)?, "interiors": interiors }),
        );
    }
    if let Some(is_empty) = field.is_empty {
        object.insert("is_empty".to_owned(), json!(is_empty));
    }
    if let Some(is_null) = field.is_null {
        object.insert("is_null".to_owned(), json!(is_null));
    }
    // Qdrant rejects a field condition that tests nothing; the engine would not.
    if object.is_empty() {
        return Err(Status::invalid_argument(format!(
            "condition on `{}` has no match, range, values_count, geo, is_empty or is_null",
            field.key
        )));
    }
    object.insert("key".to_owned(), json!(field.key));
    Ok(Value::Object(object))
}

fn match_json(m: pb::Match) -> Result<Value, Status> {
    use pb::r#match::MatchValue;
    match m.match_value {
        Some(MatchValue::Keyword(keyword)) => Ok(json!({ "value": keyword })),
        Some(MatchValue::Integer(integer)) => Ok(json!({ "value": integer })),
        Some(MatchValue::Boolean(boolean)) => Ok(json!({ "value": boolean })),
        Some(MatchValue::Text(text)) => Ok(json!({ "text": text })),
        Some(MatchValue::Phrase(phrase)) => Ok(json!({ "phrase": phrase })),
        Some(MatchValue::TextAny(text)) => Ok(json!({ "text_any": text })),
        Some(MatchValue::Keywords(list)) => Ok(json!({ "any": list.strings })),
        Some(MatchValue::Integers(list)) => Ok(json!({ "any": list.integers })),
        Some(MatchValue::ExceptKeywords(list)) => Ok(json!({ "except": list.strings })),
        Some(MatchValue::ExceptIntegers(list)) => Ok(json!({ "except": list.integers })),
        Some(MatchValue::Prefix(_)) => Err(unsupported("the prefix match (not in qdrant-edge 0.7)")),
        Some(MatchValue::Substring(_)) => Err(unsupported("the substring match (not in qdrant-edge 0.7)")),
        None => Err(Status::invalid_argument("match condition is empty")),
    }
}

/// `{"lt": .., "gte": ..}` with unset bounds left out.
fn bounds_json<T: Into<Value>>(bounds: [(&str, Option<T>); 4]) -> Value {
    Value::Object(
        bounds.into_iter().filter_map(|(name, bound)| bound.map(|b| (name.to_owned(), b.into()))).collect(),
    )
}

fn geo_point_json(point: Option<pb::GeoPoint>) -> Result<Value, Status> {
    let point = point.ok_or_else(|| Status::invalid_argument("geo condition is missing a point"))?;
    Ok(json!({ "lon": point.lon, "lat": point.lat }))
}

fn line_json(line: pb::GeoLineString) -> Result<Value, Status> {
    let points = line.points.into_iter().map(|p| geo_point_json(Some(p))).collect::<Result<Vec<_>, _>>()?;
    Ok(json!({ "points": points }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qdrant_client::qdrant::{Condition, Filter as PbFilter, Range};

    fn convert(filter: PbFilter) -> Result<Filter, Status> {
        filter_from_pb(Some(filter)).map(|f| f.expect("a filter was given"))
    }

    #[test]
    fn keyword_match_becomes_the_engine_form() {
        let filter =
            convert(PbFilter::must([Condition::matches("user_id", "a".to_string())])).expect("valid filter");
        let json = serde_json::to_value(&filter).expect("serialisable");
        assert_eq!(json, json!({ "must": [{ "key": "user_id", "match": { "value": "a" } }] }));
    }

    #[test]
    fn all_clause_kinds_and_conditions_convert() {
        let filter = PbFilter {
            must: vec![
                Condition::matches("n", 3_i64),
                Condition::matches("flag", true),
                Condition::matches("tag", vec!["x".to_string(), "y".to_string()]),
                Condition::range("ts", Range { gte: Some(1.0), lt: Some(9.5), ..Default::default() }),
                Condition::has_id([1_u64, 2]),
            ],
            should: vec![Condition::is_empty("maybe"), Condition::is_null("gone")],
            must_not: vec![Condition::matches("role", "system".to_string())],
            min_should: None,
        };
        let expected: Filter = serde_json::from_value(json!({
            "must": [
                { "key": "n", "match": { "value": 3 } },
                { "key": "flag", "match": { "value": true } },
                { "key": "tag", "match": { "any": ["x", "y"] } },
                { "key": "ts", "range": { "gte": 1.0, "lt": 9.5 } },
                { "has_id": [1, 2] },
            ],
            "should": [{ "is_empty": { "key": "maybe" } }, { "is_null": { "key": "gone" } }],
            "must_not": [{ "key": "role", "match": { "value": "system" } }],
        }))
        .expect("the REST form parses");
        assert_eq!(convert(filter).expect("valid filter"), expected);
    }

    #[test]
    fn empty_and_unsupported_conditions_are_refused() {
        let empty = PbFilter::must([Condition { condition_one_of: None }]);
        assert_eq!(convert(empty).expect_err("empty").code(), tonic::Code::InvalidArgument);

        let no_test = PbFilter::must([Condition::from(pb::FieldCondition {
            key: "user_id".into(),
            ..Default::default()
        })]);
        assert_eq!(convert(no_test).expect_err("no test").code(), tonic::Code::InvalidArgument);

        let bad_id = PbFilter::must([Condition::has_id([pb::PointId::from("x".to_string())])]);
        assert_eq!(convert(bad_id).expect_err("bad id").code(), tonic::Code::InvalidArgument);
    }
}
