//! Naming AI endpoints: what enrich pays per egress record with DNS names.
//!
//! In: the shipped catalog, and that catalog with 1,000 more providers of
//! four patterns each (exact, subtree, in-label and middle wildcards). Out:
//! criterion timings of `Catalog::lookup_normalized` for a catalog name, a
//! name that is no endpoint (the common case: most egress is not AI), and
//! a deep name under a subtree pattern. The cost follows the name's labels,
//! not the catalog's size.
//!
//! Run: `AYA_BUILD_SKIP=1 cargo bench -p observer --bench ai_catalog`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use observer::ai::{Catalog, CatalogConfig, ProviderSpec};

fn large() -> Catalog {
    let providers = (0..1_000)
        .map(|index| ProviderSpec {
            name: format!("provider-{index}"),
            kind: Some(observer::ai::AiKind::LlmApi),
            patterns: vec![
                format!("api.provider-{index}.example"),
                format!("*.models.provider-{index}.example"),
                format!("*-inference.provider-{index}.example"),
                format!("runtime.*.provider-{index}.example"),
            ],
        })
        .collect();
    Catalog::build(&CatalogConfig { replace: false, providers }).expect("a valid catalog")
}

fn bench(c: &mut Criterion) {
    let shipped = Catalog::build(&CatalogConfig::default()).expect("the shipped catalog");
    let large = large();
    let names = [
        ("catalog name", "api.openai.com"),
        ("not an endpoint", "storage.eu-west-1.cdn.example.net"),
        ("deep subtree", "a.b.c.d.cdn-lfs.huggingface.co"),
        ("middle wildcard", "bedrock-runtime.us-east-1.amazonaws.com"),
    ];
    for (catalog_name, catalog) in [("shipped", &shipped), ("1000 more providers", &large)] {
        for (case, name) in names {
            c.bench_function(&format!("ai catalog lookup, {catalog_name}: {case}"), |b| {
                b.iter(|| black_box(catalog.lookup_normalized(black_box(name)).map(|provider| provider.kind)))
            });
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
