//! Bad input never panics: fixture manifests with random bytes changed, lines dropped or
//! duplicated, go through decoding and translation; any outcome but a panic is fine.

use std::path::Path;

use model::Snapshot;
use model::decode::decode_file;
use proptest::prelude::*;

fn fixtures() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut texts: Vec<String> = std::fs::read_dir(dir)
        .expect("fixtures directory")
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .collect();
    texts.sort();
    texts
}

#[derive(Debug, Clone)]
enum Mutation {
    DropLine(usize),
    DuplicateLine(usize),
    ReplaceByte(usize, u8),
    SwapLines(usize, usize),
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for mutation in mutations {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match *mutation {
            Mutation::DropLine(i) => {
                lines.remove(i % n);
            }
            Mutation::DuplicateLine(i) => {
                let line = lines[i % n].clone();
                lines.insert(i % n, line);
            }
            Mutation::ReplaceByte(i, byte) => {
                let line = &mut lines[i % n];
                let mut bytes = line.clone().into_bytes();
                if !bytes.is_empty() {
                    let at = i % bytes.len();
                    bytes[at] = byte;
                }
                *line = String::from_utf8_lossy(&bytes).into_owned();
            }
            Mutation::SwapLines(a, b) => lines.swap(a % n, b % n),
        }
    }
    lines.join("\n")
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop::sample::select(b" :-{}[]'\"*&!|>#0aZ/\t".to_vec());
    prop_oneof![
        any::<usize>().prop_map(Mutation::DropLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), byte).prop_map(|(i, b)| Mutation::ReplaceByte(i, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn mutated_manifests_never_panic(
        which in any::<usize>(),
        mutations in prop::collection::vec(arb_mutation(), 1..6),
    ) {
        let texts = fixtures();
        let text = mutate(&texts[which % texts.len()], &mutations);
        if let Ok(contents) = decode_file(Path::new("mutated.yaml"), &text) {
            let snapshot = Snapshot::from_objects(contents.objects.into_iter().map(|(o, _)| o));
            let options = translate::Options {
                address_pool: Some("127.0.100.0/30".parse().expect("cidr")),
                ..translate::Options::default()
            };
            let _ = translate::translate(&snapshot, &options);
        }
    }
}
