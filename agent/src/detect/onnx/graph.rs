//! Structural checks on an ONNX graph before tract translates it: tract
//! indexes its name table with each graph output's name and panics when no
//! input, initializer or node produces that name, so such a model is refused
//! here with a reason instead. Subgraphs (the bodies of If, Loop, Scan) are
//! checked the same way, each against its own names, as tract parses them.
//! tract also panics on a string tensor stored as raw bytes (it decodes only
//! numeric raw data), so every initializer and constant is checked for that.

use std::collections::HashSet;

use tract_onnx::pb::{GraphProto, ModelProto, TensorProto, tensor_proto::DataType};

/// Deepest nesting of subgraphs accepted; real models nest a few levels, and
/// the bound keeps the recursion's stack use small whatever the file holds.
const MAX_DEPTH: usize = 16;

/// Why a graph cannot be translated.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GraphError {
    #[error("the model holds no graph")]
    NoGraph,
    #[error("graph output {0:?} is produced by no input, initializer or node")]
    DanglingOutput(String),
    #[error("subgraphs nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("tensor {0:?} holds strings as raw bytes, which cannot be decoded")]
    RawStrings(String),
}

/// Checks the model's main graph and every subgraph under it.
pub fn check(model: &ModelProto) -> Result<(), GraphError> {
    let graph = model.graph.as_ref().ok_or(GraphError::NoGraph)?;
    check_graph(graph, 0)
}

fn check_graph(graph: &GraphProto, depth: usize) -> Result<(), GraphError> {
    if depth > MAX_DEPTH {
        return Err(GraphError::TooDeep);
    }
    let produced: HashSet<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .chain(graph.initializer.iter().map(|t| t.name.as_str()))
        .chain(
            graph
                .node
                .iter()
                .flat_map(|n| n.output.iter())
                .filter(|o| !o.is_empty())
                .map(String::as_str),
        )
        .collect();
    if let Some(out) = graph
        .output
        .iter()
        .find(|o| !produced.contains(o.name.as_str()))
    {
        return Err(GraphError::DanglingOutput(out.name.clone()));
    }
    for tensor in graph.initializer.iter() {
        check_tensor(tensor)?;
    }
    for attr in graph.node.iter().flat_map(|n| n.attribute.iter()) {
        for tensor in attr.t.iter().chain(attr.tensors.iter()) {
            check_tensor(tensor)?;
        }
        for sub in attr.g.iter().chain(attr.graphs.iter()) {
            check_graph(sub, depth + 1)?;
        }
    }
    Ok(())
}

fn check_tensor(tensor: &TensorProto) -> Result<(), GraphError> {
    if tensor.data_type == DataType::String as i32 && !tensor.raw_data.is_empty() {
        return Err(GraphError::RawStrings(tensor.name.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{AttributeProto, NodeProto, ValueInfoProto};

    fn value(name: &str) -> ValueInfoProto {
        ValueInfoProto {
            name: name.into(),
            ..Default::default()
        }
    }

    fn identity(input: &str, output: &str) -> NodeProto {
        NodeProto {
            input: vec![input.into()],
            output: vec![output.into()],
            op_type: "Identity".into(),
            ..Default::default()
        }
    }

    fn graph(outputs: &[&str]) -> GraphProto {
        GraphProto {
            input: vec![value("x")],
            node: vec![identity("x", "y")],
            output: outputs.iter().map(|o| value(o)).collect(),
            ..Default::default()
        }
    }

    fn model(graph: GraphProto) -> ModelProto {
        ModelProto {
            graph: Some(graph),
            ..Default::default()
        }
    }

    #[test]
    fn outputs_named_by_nodes_or_inputs_pass() {
        assert_eq!(check(&model(graph(&["y"]))), Ok(()));
        assert_eq!(check(&model(graph(&["x", "y"]))), Ok(()));
    }

    #[test]
    fn an_output_nothing_produces_is_refused() {
        assert_eq!(
            check(&model(graph(&["y", "z"]))),
            Err(GraphError::DanglingOutput("z".into()))
        );
        assert_eq!(check(&ModelProto::default()), Err(GraphError::NoGraph));
    }

    #[test]
    fn subgraphs_are_checked_and_their_depth_bounded() {
        let mut outer = graph(&["y"]);
        outer.node[0].attribute.push(AttributeProto {
            g: Some(graph(&["nowhere"])),
            ..Default::default()
        });
        assert_eq!(
            check(&model(outer)),
            Err(GraphError::DanglingOutput("nowhere".into()))
        );

        let mut nested = graph(&["y"]);
        for _ in 0..=MAX_DEPTH {
            let mut parent = graph(&["y"]);
            parent.node[0].attribute.push(AttributeProto {
                graphs: vec![nested],
                ..Default::default()
            });
            nested = parent;
        }
        assert_eq!(check(&model(nested)), Err(GraphError::TooDeep));
    }

    #[test]
    fn raw_string_tensors_are_refused_wherever_they_sit() {
        let raw_strings = TensorProto {
            name: "s".into(),
            data_type: DataType::String as i32,
            raw_data: b"abc".to_vec(),
            ..Default::default()
        };
        let mut g = graph(&["y"]);
        g.initializer.push(raw_strings.clone());
        assert_eq!(check(&model(g)), Err(GraphError::RawStrings("s".into())));
        let mut g = graph(&["y"]);
        g.node[0].attribute.push(AttributeProto {
            t: Some(raw_strings.clone()),
            ..Default::default()
        });
        assert_eq!(check(&model(g)), Err(GraphError::RawStrings("s".into())));
        let floats = TensorProto {
            data_type: DataType::Float as i32,
            ..raw_strings
        };
        let mut g = graph(&["y"]);
        g.initializer.push(floats);
        assert_eq!(check(&model(g)), Ok(()));
    }
}
