//! One edit to the embedding model's graph before ONNX Runtime loads it: embedding
//! tables are dequantized row by row after the lookup, not whole at load.
//!
//! The shipped model stores its weights as int8 with a float scale per row, and turns them
//! back into floats in the graph (`Mul(Cast(weight_q), scale)`). ONNX Runtime folds those
//! constants at load, which for the word-embedding table (30,522 × 384) makes a 45 MiB
//! float copy that lives as long as the session, although a question reads a few dozen of
//! its rows. [`dequantize_after_gather`] rewrites each `Gather` over such a table into
//! `Mul(Cast(Gather(weight_q, ids)), Gather(scale, ids))`: every output element is the
//! same float product as before (bit for bit), and the table stays int8 in memory. The
//! matrices the layers multiply by keep their folded float copies: without them each
//! question would dequantize them again (about five times slower, as measured).
//!
//! The edit works on the protobuf encoding itself (field numbers from ONNX's
//! `onnx.proto`: `ModelProto.graph` = 7, `GraphProto.node` = 1, `NodeProto.input` = 1,
//! `output` = 2, `name` = 3, `op_type` = 4, `attribute` = 5, `domain` = 7), copying every
//! field it does not touch byte for byte. It rewrites only what it can check: a table
//! `[rows, width]` with a scale `[rows, 1]`, both stored tensors, read by nothing else, in
//! a graph without subgraphs. A model with nothing to rewrite comes back unchanged.

/// The `ModelProto` field holding the graph.
const MODEL_GRAPH: u32 = 7;
/// The `GraphProto` fields holding one node, one stored tensor, one graph output.
const GRAPH_NODE: u32 = 1;
const GRAPH_INITIALIZER: u32 = 5;
const GRAPH_OUTPUT: u32 = 12;
/// `TensorProto.dims`, `TensorProto.name`; `ValueInfoProto.name`.
const TENSOR_DIMS: u32 = 1;
const TENSOR_NAME: u32 = 8;
const VALUE_INFO_NAME: u32 = 1;
/// `AttributeProto.g` and `.graphs`: a node with a subgraph.
const ATTRIBUTE_GRAPH: u32 = 6;
const ATTRIBUTE_GRAPHS: u32 = 11;
const NODE_INPUT: u32 = 1;
const NODE_OUTPUT: u32 = 2;
const NODE_NAME: u32 = 3;
const NODE_OP_TYPE: u32 = 4;
const NODE_ATTRIBUTE: u32 = 5;
const NODE_DOMAIN: u32 = 7;
const ATTRIBUTE_NAME: u32 = 1;
const ATTRIBUTE_INT: u32 = 3;
const ATTRIBUTE_TYPE: u32 = 20;
/// `AttributeProto.AttributeType.INT`.
const ATTRIBUTE_TYPE_INT: u64 = 2;
/// `TensorProto.DataType.FLOAT`: the `to` of the rewritten `Cast`.
const FLOAT: u64 = 1;

const VARINT: u32 = 0;
const LENGTH_DELIMITED: u32 = 2;

/// Why the model's bytes could not be read as a protobuf.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the model file is not a valid ONNX protobuf: {0}")]
pub struct GraphError(&'static str);

/// One field of a protobuf message: its number, wire type and the bytes of its value
/// (for a varint, the decoded number is in `number_value`).
struct Field<'a> {
    number: u32,
    wire_type: u32,
    /// The whole encoded field, tag included: copied as is when left alone.
    encoded: &'a [u8],
    /// The payload of a length-delimited field.
    payload: &'a [u8],
    number_value: u64,
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Result<u64, GraphError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes
            .get(*at)
            .ok_or(GraphError("a varint runs past the end"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(GraphError("a varint is longer than 10 bytes"))
}

fn fields(message: &[u8]) -> Result<Vec<Field<'_>>, GraphError> {
    let mut fields = Vec::new();
    let mut at = 0;
    while at < message.len() {
        let start = at;
        let tag = read_varint(message, &mut at)?;
        let number =
            u32::try_from(tag >> 3).map_err(|_| GraphError("a field number is too large"))?;
        let wire_type = (tag & 7) as u32;
        let mut payload: &[u8] = &[];
        let mut number_value = 0;
        match wire_type {
            0 => number_value = read_varint(message, &mut at)?,
            1 => at += 8,
            2 => {
                let length = usize::try_from(read_varint(message, &mut at)?)
                    .map_err(|_| GraphError("a length is too large"))?;
                let end = at
                    .checked_add(length)
                    .filter(|end| *end <= message.len())
                    .ok_or(GraphError("a length runs past the end"))?;
                payload = &message[at..end];
                at = end;
            }
            5 => at += 4,
            _ => return Err(GraphError("an unknown wire type")),
        }
        if at > message.len() {
            return Err(GraphError("a fixed-size field runs past the end"));
        }
        fields.push(Field {
            number,
            wire_type,
            encoded: &message[start..at],
            payload,
            number_value,
        });
    }
    Ok(fields)
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn write_tag(out: &mut Vec<u8>, number: u32, wire_type: u32) {
    write_varint(out, (u64::from(number) << 3) | u64::from(wire_type));
}

fn write_bytes(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    write_tag(out, number, LENGTH_DELIMITED);
    write_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The parts of a node the rewrite reads.
struct Node<'a> {
    op_type: &'a [u8],
    domain: &'a [u8],
    inputs: Vec<&'a [u8]>,
    outputs: Vec<&'a [u8]>,
    /// The `axis` attribute, when present.
    axis: Option<u64>,
    /// The `to` attribute (a `Cast`'s target type), when present.
    to: Option<u64>,
    /// Any other attribute: such a node is left alone.
    other_attributes: bool,
    /// An attribute holding a graph (`If`, `Loop`): names may be read inside it.
    subgraph: bool,
}

fn read_node(encoded: &[u8]) -> Result<Node<'_>, GraphError> {
    let mut node = Node {
        op_type: &[],
        domain: &[],
        inputs: Vec::new(),
        outputs: Vec::new(),
        axis: None,
        to: None,
        other_attributes: false,
        subgraph: false,
    };
    for field in fields(encoded)? {
        match field.number {
            NODE_INPUT => node.inputs.push(field.payload),
            NODE_OUTPUT => node.outputs.push(field.payload),
            NODE_OP_TYPE => node.op_type = field.payload,
            NODE_DOMAIN => node.domain = field.payload,
            NODE_ATTRIBUTE => {
                let attribute = fields(field.payload)?;
                node.subgraph |= attribute
                    .iter()
                    .any(|f| f.number == ATTRIBUTE_GRAPH || f.number == ATTRIBUTE_GRAPHS);
                let name = attribute.iter().find(|f| f.number == ATTRIBUTE_NAME);
                let int = attribute.iter().find(|f| f.number == ATTRIBUTE_INT);
                match (name.map(|f| f.payload), int) {
                    (Some(b"axis"), Some(int)) if int.wire_type == VARINT => {
                        node.axis = Some(int.number_value);
                    }
                    (Some(b"to"), Some(int)) if int.wire_type == VARINT => {
                        node.to = Some(int.number_value);
                    }
                    _ => node.other_attributes = true,
                }
            }
            _ => {}
        }
    }
    Ok(node)
}

impl Node<'_> {
    fn is(&self, op_type: &str) -> bool {
        self.op_type == op_type.as_bytes() && (self.domain.is_empty() || self.domain == b"ai.onnx")
    }
}

fn encode_node(
    name: &[u8],
    op_type: &str,
    inputs: &[&[u8]],
    output: &[u8],
    cast_to: Option<u64>,
) -> Vec<u8> {
    let mut node = Vec::new();
    for input in inputs {
        write_bytes(&mut node, NODE_INPUT, input);
    }
    write_bytes(&mut node, NODE_OUTPUT, output);
    write_bytes(&mut node, NODE_NAME, name);
    write_bytes(&mut node, NODE_OP_TYPE, op_type.as_bytes());
    if let Some(to) = cast_to {
        let mut attribute = Vec::new();
        write_bytes(&mut attribute, ATTRIBUTE_NAME, b"to");
        write_tag(&mut attribute, ATTRIBUTE_INT, VARINT);
        write_varint(&mut attribute, to);
        write_tag(&mut attribute, ATTRIBUTE_TYPE, VARINT);
        write_varint(&mut attribute, ATTRIBUTE_TYPE_INT);
        write_bytes(&mut node, NODE_ATTRIBUTE, &attribute);
    }
    node
}

/// The dimensions of each stored tensor (initializer) of the graph, by name.
fn initializer_shapes<'a>(
    graph_fields: &[Field<'a>],
) -> Result<std::collections::HashMap<&'a [u8], Vec<u64>>, GraphError> {
    let mut shapes = std::collections::HashMap::new();
    for field in graph_fields
        .iter()
        .filter(|f| f.number == GRAPH_INITIALIZER)
    {
        let mut name: &[u8] = &[];
        let mut dims = Vec::new();
        for tensor_field in fields(field.payload)? {
            match (tensor_field.number, tensor_field.wire_type) {
                (TENSOR_NAME, LENGTH_DELIMITED) => name = tensor_field.payload,
                (TENSOR_DIMS, VARINT) => dims.push(tensor_field.number_value),
                // Packed: the varints one after another.
                (TENSOR_DIMS, LENGTH_DELIMITED) => {
                    let mut at = 0;
                    while at < tensor_field.payload.len() {
                        dims.push(read_varint(tensor_field.payload, &mut at)?);
                    }
                }
                _ => {}
            }
        }
        shapes.insert(name, dims);
    }
    Ok(shapes)
}

/// The model with every `Gather` over a `Mul(Cast(int8 table), row scale)` rewritten to
/// dequantize only the rows it gathers (see the module docs), and how many it rewrote.
/// `Cast` and `Mul` nodes left without a consumer are dropped with it.
pub fn dequantize_after_gather(model: &[u8]) -> Result<(Vec<u8>, usize), GraphError> {
    let model_fields = fields(model)?;
    let mut graphs = model_fields.iter().filter(|f| f.number == MODEL_GRAPH);
    let (Some(graph), None) = (graphs.next(), graphs.next()) else {
        // No graph, or one split over several fields (protobuf merges them): left alone.
        return Ok((model.to_vec(), 0));
    };
    let graph_fields = fields(graph.payload)?;
    let mut nodes = Vec::new();
    for field in graph_fields.iter().filter(|f| f.number == GRAPH_NODE) {
        nodes.push(read_node(field.payload)?);
    }
    if nodes.iter().any(|node| node.subgraph) {
        return Ok((model.to_vec(), 0));
    }
    let shapes = initializer_shapes(&graph_fields)?;
    let mut graph_outputs = Vec::new();
    for field in graph_fields.iter().filter(|f| f.number == GRAPH_OUTPUT) {
        if let Some(name) = fields(field.payload)?
            .iter()
            .find(|f| f.number == VALUE_INFO_NAME)
        {
            graph_outputs.push(name.payload);
        }
    }
    let producer = |name: &[u8]| {
        nodes
            .iter()
            .position(|node| node.outputs.first() == Some(&name))
    };
    let consumers = |name: &[u8]| {
        nodes
            .iter()
            .filter(|node| node.inputs.contains(&name))
            .count()
    };
    // Node index of each rewritten Gather -> its replacement; nodes dropped.
    let mut replaced: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
    let mut dropped: Vec<usize> = Vec::new();
    for (at, gather) in nodes.iter().enumerate() {
        if !gather.is("Gather")
            || gather.other_attributes
            || gather.axis.is_some_and(|axis| axis != 0)
            || gather.inputs.len() != 2
            || gather.outputs.len() != 1
        {
            continue;
        }
        let table = gather.inputs[0];
        let Some(mul_at) = producer(table) else {
            continue;
        };
        let mul = &nodes[mul_at];
        if !mul.is("Mul")
            || mul.inputs.len() != 2
            || consumers(table) != 1
            || graph_outputs.contains(&table)
        {
            continue;
        }
        // Which Mul input is the Cast of the int8 table; the other is the row scale.
        let cast = mul.inputs.iter().enumerate().find_map(|(side, input)| {
            let cast_at = producer(input)?;
            let cast = &nodes[cast_at];
            (cast.is("Cast")
                && cast.to == Some(FLOAT)
                && cast.inputs.len() == 1
                && consumers(input) == 1)
                .then_some((side, cast_at))
        });
        let Some((cast_side, cast_at)) = cast else {
            continue;
        };
        let quantized = nodes[cast_at].inputs[0];
        let scale = mul.inputs[1 - cast_side];
        // Both must be stored tensors (initializers): a table [rows, width] and a scale
        // per row, [rows, 1]; and the float table nothing but this Gather reads.
        let (Some(table_shape), Some(scale_shape)) = (shapes.get(quantized), shapes.get(scale))
        else {
            continue;
        };
        let per_row = matches!((table_shape.as_slice(), scale_shape.as_slice()),
            ([rows, _], [scale_rows, 1]) if rows == scale_rows);
        if !per_row
            || producer(quantized).is_some()
            || producer(scale).is_some()
            || graph_outputs.contains(&mul.inputs[cast_side])
        {
            continue;
        }
        let ids = gather.inputs[1];
        let output = gather.outputs[0];
        let named = |suffix: &str| [output, suffix.as_bytes()].concat();
        let rows_q = named("/rows_quantized");
        let rows_scale = named("/rows_scale");
        let rows_float = named("/rows_float");
        let mut cast_then_scale = vec![
            encode_node(&rows_q, "Gather", &[quantized, ids], &rows_q, None),
            encode_node(&rows_scale, "Gather", &[scale, ids], &rows_scale, None),
            encode_node(&rows_float, "Cast", &[&rows_q], &rows_float, Some(FLOAT)),
        ];
        let product: [&[u8]; 2] = if cast_side == 0 {
            [&rows_float, &rows_scale]
        } else {
            [&rows_scale, &rows_float]
        };
        cast_then_scale.push(encode_node(
            &named("/dequantize"),
            "Mul",
            &product,
            output,
            None,
        ));
        replaced.push((at, cast_then_scale));
        dropped.extend([mul_at, cast_at]);
    }
    if replaced.is_empty() {
        return Ok((model.to_vec(), 0));
    }
    let mut new_graph = Vec::with_capacity(graph.payload.len() + 1024);
    let mut node_index = 0;
    for field in &graph_fields {
        if field.number != GRAPH_NODE {
            new_graph.extend_from_slice(field.encoded);
            continue;
        }
        let at = node_index;
        node_index += 1;
        if dropped.contains(&at) {
            continue;
        }
        match replaced.iter().find(|(index, _)| *index == at) {
            Some((_, replacement)) => {
                for node in replacement {
                    write_bytes(&mut new_graph, GRAPH_NODE, node);
                }
            }
            None => new_graph.extend_from_slice(field.encoded),
        }
    }
    let mut new_model = Vec::with_capacity(model.len() + 1024);
    for field in &model_fields {
        if field.number == MODEL_GRAPH {
            write_bytes(&mut new_model, MODEL_GRAPH, &new_graph);
        } else {
            new_model.extend_from_slice(field.encoded);
        }
    }
    Ok((new_model, replaced.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op_type: &str, inputs: &[&str], output: &str) -> Vec<u8> {
        let inputs: Vec<&[u8]> = inputs.iter().map(|i| i.as_bytes()).collect();
        let cast_to = (op_type == "Cast").then_some(FLOAT);
        encode_node(
            output.as_bytes(),
            op_type,
            &inputs,
            output.as_bytes(),
            cast_to,
        )
    }

    /// A stored tensor's header: its name and dimensions (dims unpacked, as some
    /// writers do; the model's own are packed).
    fn initializer(name: &str, dims: &[u64]) -> Vec<u8> {
        let mut tensor = Vec::new();
        for dim in dims {
            write_tag(&mut tensor, TENSOR_DIMS, VARINT);
            write_varint(&mut tensor, *dim);
        }
        write_bytes(&mut tensor, TENSOR_NAME, name.as_bytes());
        tensor
    }

    /// A graph of `nodes` over a table `table_q` [30, 4] and the scale `table_scale`
    /// of `scale_dims`.
    fn model(nodes: &[Vec<u8>]) -> Vec<u8> {
        model_with_scale(nodes, &[30, 1])
    }

    fn model_with_scale(nodes: &[Vec<u8>], scale_dims: &[u64]) -> Vec<u8> {
        let mut graph = Vec::new();
        for node in nodes {
            write_bytes(&mut graph, GRAPH_NODE, node);
        }
        write_bytes(
            &mut graph,
            GRAPH_INITIALIZER,
            &initializer("table_q", &[30, 4]),
        );
        write_bytes(
            &mut graph,
            GRAPH_INITIALIZER,
            &initializer("table_scale", scale_dims),
        );
        write_bytes(&mut graph, 2, b"main");
        let mut model = Vec::new();
        write_tag(&mut model, 1, VARINT);
        write_varint(&mut model, 10);
        write_bytes(&mut model, MODEL_GRAPH, &graph);
        model
    }

    fn op_types(model: &[u8]) -> Vec<(String, Vec<String>, String)> {
        let fields = fields(model).unwrap();
        let graph = fields.iter().find(|f| f.number == MODEL_GRAPH).unwrap();
        fields_of_graph(graph.payload)
    }

    fn fields_of_graph(graph: &[u8]) -> Vec<(String, Vec<String>, String)> {
        let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).unwrap();
        fields(graph)
            .unwrap()
            .iter()
            .filter(|f| f.number == GRAPH_NODE)
            .map(|f| {
                let node = read_node(f.payload).unwrap();
                (
                    text(node.op_type),
                    node.inputs.iter().map(|i| text(i)).collect(),
                    text(node.outputs[0]),
                )
            })
            .collect()
    }

    #[test]
    fn a_gather_over_a_dequantized_table_reads_rows_then_dequantizes_them() {
        let original = model(&[
            node("Cast", &["table_q"], "table_f"),
            node("Mul", &["table_f", "table_scale"], "table"),
            node("Gather", &["table", "input_ids"], "embedding"),
            node("Add", &["embedding", "bias"], "out"),
        ]);
        let (rewritten, count) = dequantize_after_gather(&original).unwrap();
        assert_eq!(count, 1);
        let nodes = op_types(&rewritten);
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            nodes,
            vec![
                (
                    "Gather".into(),
                    strings(&["table_q", "input_ids"]),
                    "embedding/rows_quantized".into()
                ),
                (
                    "Gather".into(),
                    strings(&["table_scale", "input_ids"]),
                    "embedding/rows_scale".into()
                ),
                (
                    "Cast".into(),
                    strings(&["embedding/rows_quantized"]),
                    "embedding/rows_float".into()
                ),
                (
                    "Mul".into(),
                    strings(&["embedding/rows_float", "embedding/rows_scale"]),
                    "embedding".into()
                ),
                ("Add".into(), strings(&["embedding", "bias"]), "out".into()),
            ]
        );
        // The fields around the graph and the graph's own other fields are kept.
        let fields = fields(&rewritten).unwrap();
        assert_eq!(fields[0].number, 1);
        assert_eq!(fields[0].number_value, 10);
        let graph = fields.iter().find(|f| f.number == MODEL_GRAPH).unwrap();
        assert!(
            super::fields(graph.payload)
                .unwrap()
                .iter()
                .any(|f| f.number == 2 && f.payload == b"main")
        );
    }

    #[test]
    fn a_table_another_node_also_reads_is_left_alone() {
        let original = model(&[
            node("Cast", &["table_q"], "table_f"),
            node("Mul", &["table_f", "table_scale"], "table"),
            node("Gather", &["table", "input_ids"], "embedding"),
            node("MatMul", &["hidden", "table"], "logits"),
        ]);
        let (rewritten, count) = dequantize_after_gather(&original).unwrap();
        assert_eq!(count, 0);
        assert_eq!(rewritten, original);
    }

    #[test]
    fn a_table_without_one_scale_per_row_is_left_alone() {
        let nodes = [
            node("Cast", &["table_q"], "table_f"),
            node("Mul", &["table_f", "table_scale"], "table"),
            node("Gather", &["table", "input_ids"], "embedding"),
        ];
        for scale_dims in [&[][..], &[1], &[1, 4], &[4]] {
            let original = model_with_scale(&nodes, scale_dims);
            assert_eq!(
                dequantize_after_gather(&original).unwrap(),
                (original, 0),
                "scale {scale_dims:?}"
            );
        }
    }

    #[test]
    fn a_gather_over_a_plain_initializer_is_left_alone() {
        let original = model(&[node("Gather", &["table", "input_ids"], "embedding")]);
        assert_eq!(dequantize_after_gather(&original).unwrap(), (original, 0));
    }

    #[test]
    fn bytes_that_are_no_protobuf_are_refused() {
        assert!(dequantize_after_gather(&[0x3a, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(dequantize_after_gather(&[0x0f]).is_err());
    }
}
