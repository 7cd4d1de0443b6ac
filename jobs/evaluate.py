"""``ldot eval``: Recall@K of an embeddings table (and optionally a built index) against a caption set.

    ldot eval --captions dataset_flickr30k.json --embeddings out/emb/ --checkpoint flickr-ft.pt --vocab vocab.txt \\
              --split test --reference flickr30k --json report.json --plot recall.png [--index ROOT] \\
              [--rerank model_step_N.pt --rerank-top 20 --regions out/regions/]
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import click
import numpy as np

from evaluation.captions import CaptionError, load_captions
from evaluation.core import GALLERIES, MISSING_POLICIES, REFERENCE, EvaluationError, evaluate, parse_ks
from evaluation.embeddings import EmbeddingsError, read_embeddings
from evaluation.image_mapping import map_images
from evaluation.report import format_table, plot, write_json
from evaluation.rerank import Reranking
from jobs.options import reranker_model_options

log = logging.getLogger(__name__)


def encode_unique(model: Any, texts: list[str], batch_size: int) -> np.ndarray:
    """Encode each distinct caption once (length-bucketed batches inside the model), in input order."""
    uniq: dict[str, int] = {}
    inverse = np.fromiter((uniq.setdefault(t, len(uniq)) for t in texts), dtype=np.int64, count=len(texts))
    vectors = model.encode_captions(list(uniq), batch_size=batch_size)
    return vectors[inverse]


def open_index(root: str, nprobe: int | None) -> tuple[Any, dict[str, Any]]:
    try:
        from index.search import SearchIndex
    except ImportError as e:  # the index package may not be installed/built yet
        raise click.ClickException(f"--index needs the index package (index.search.SearchIndex): {e}") from e
    idx = SearchIndex.open(root, nprobe=nprobe)
    info: dict[str, Any] = {"root": root}
    manifest = getattr(idx, "manifest", None)
    if isinstance(manifest, dict):
        info["version"] = manifest.get("version")
        info["factory"] = manifest.get("factory")
        info["nprobe"] = manifest.get("nprobe")
        info["model"] = manifest.get("model")
        if isinstance(manifest.get("count"), int):
            info["vectors"] = manifest["count"]
        selfcheck = manifest.get("selfcheck")
        if isinstance(selfcheck, dict) and "recall_at_k" in selfcheck:
            info["selfcheck_recall"] = selfcheck["recall_at_k"]
    live_nprobe = getattr(idx, "nprobe", None)
    if isinstance(live_nprobe, int):
        info["nprobe"] = live_nprobe
    elif nprobe is not None:
        info["nprobe"] = nprobe
    ntotal = getattr(idx, "ntotal", None)
    if isinstance(ntotal, int):
        info["vectors"] = ntotal
    return idx, {k: v for k, v in info.items() if v is not None}


def index_search(idx: Any, batch: int = 1024):
    def search(vectors: np.ndarray, k: int) -> list[list[str]]:
        out: list[list[str]] = []
        for a in range(0, len(vectors), batch):
            res = idx.search(np.ascontiguousarray(vectors[a : a + batch], dtype=np.float32), k)
            out += [[str(i) for i in ids if i is not None and i != ""] for ids in res.image_ids]
        return out

    return search


def load_reranking(checkpoint: str, regions: str, config: str | None, head: str, top_m: int, vocab: str,
                   device: str, dtype: str) -> Reranking:
    """The UNITER cross-encoder and the regions source as ``evaluate``'s ``rerank`` argument."""
    from index.rerank import PairScorer

    scorer = PairScorer.open(checkpoint, regions, config=config, head=head, device=device, dtype=dtype, vocab=vocab)
    return Reranking(scorer, top_m, info=scorer.describe())


@click.command("eval")
@click.option("--captions", "captions_path", required=True,
              help="Karpathy split JSON, COCO captions JSON, or CSV/TSV/JSONL of (image_id, caption) rows.")
@click.option("--embeddings", "embeddings_path", required=True, multiple=True,
              help="Embeddings Parquet: file, directory or glob (local or fsspec URL); repeatable.")
@click.option("--index", "index_root", default=None, help="Index ROOT: text → image through the ANN index too.")
@click.option("--nprobe", type=int, default=None, help="nprobe for --index (default: the manifest's).")
@click.option("--checkpoint", default=None, help="LightningDOT checkpoint for the text tower.")
@click.option("--vocab", default=None, help="WordPiece vocab.txt (else $LDOT_VOCAB, else vocab.txt by the checkpoint).")
@click.option("--encoder-config", default=None, help="Encoder config JSON (default: the checkpoint's, else BERT-base).")
@click.option("--random-weights", is_flag=True, help="Random text tower (smoke runs only; figures are meaningless).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --random-weights.")
@click.option("--split", default="test", show_default=True,
              help="Split(s) to evaluate, comma-separated; 'all' keeps every row.")
@click.option("--text-field", type=click.Choice(["raw", "tokens"]), default="raw", show_default=True,
              help="Karpathy sentence field to encode.")
@click.option("--k", "ks", default="1,5,10", show_default=True, help="Comma-separated k values.")
@click.option("--map", "mapping", default="auto", show_default=True,
              help="Tie caption image names to embedding ids: auto|id|basename|stem|template:FORMAT "
                   "(e.g. template:{stem}, template:COCO_val2014_{cocoid:012d}).")
@click.option("--id-column", type=click.Choice(["image_id", "uri"]), default="image_id", show_default=True,
              help="Embedding column the mapping matches against.")
@click.option("--missing", type=click.Choice(MISSING_POLICIES), default="skip", show_default=True,
              help="Captions whose image is not in the embeddings: leave out (reported), count as misses, or fail.")
@click.option("--gallery", type=click.Choice(GALLERIES), default="split", show_default=True,
              help="Rank among the split's images (the paper's protocol) or among every embedding row.")
@click.option("--reference", type=click.Choice(sorted(REFERENCE)), default=None,
              help="Print the published LightningDOT figures for this dataset and the gap to them.")
@click.option("--ignore-model-mismatch", is_flag=True,
              help="Evaluate even if the embeddings were made by a different model than the text tower.")
@click.option("--json", "json_path", default=None, help="Write the full report as JSON here.")
@click.option("--plot", "plot_path", default=None, help="Write a PNG of recall@k against k here.")
@click.option("--device", default="auto", show_default=True, help="auto|cpu|cuda[:N] for caption encoding.")
@click.option("--dtype", default="float32", show_default=True,
              help="float32|bfloat16|float16 for caption encoding (and re-ranking).")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Captions per encoder batch.")
@click.option("--max-memory-mb", type=int, default=256, show_default=True,
              help="Scores held in memory at once by the exact search.")
@click.option("--rerank", "rerank_checkpoint", default=None,
              help="UNITER retrieval checkpoint: also Recall@K after re-ranking the dot product's top M with it.")
@click.option("--rerank-top", "top_m", type=click.IntRange(min=1), default=20, show_default=True,
              help="M: candidates per query (images per caption, captions per image) the re-ranker re-orders.")
@click.option("--regions", "regions_path", default=None,
              help="Region features of the evaluated images (regions Parquet directory or UNITER image DB).")
@reranker_model_options
def eval_cmd(captions_path: str, embeddings_path: tuple[str, ...], index_root: str | None, nprobe: int | None,
             checkpoint: str | None, vocab: str | None, encoder_config: str | None, random_weights: bool, seed: int,
             split: str, text_field: str, ks: str, mapping: str, id_column: str, missing: str, gallery: str,
             reference: str | None, ignore_model_mismatch: bool, json_path: str | None, plot_path: str | None,
             device: str, dtype: str, batch_size: int, max_memory_mb: int, rerank_checkpoint: str | None, top_m: int,
             regions_path: str | None, rerank_config: str | None, rerank_head: str) -> None:
    """Recall@K (text → image and image → text) of embeddings against captions, as LightningDOT reports it."""
    t_start = time.perf_counter()
    try:
        k_list = parse_ks(ks)
        if bool(rerank_checkpoint) != bool(regions_path):
            raise click.UsageError("--rerank and --regions go together: the re-ranker reads the evaluated images' "
                                   "region features")
        if rerank_checkpoint and top_m < max(k_list):
            raise click.UsageError(f"--rerank-top ({top_m}) must be at least the largest k ({max(k_list)})")
        captions = load_captions(captions_path, split=split, text_field=text_field)
        emb = read_embeddings(list(embeddings_path))
        ids = emb.image_ids if id_column == "image_id" else emb.uris
        if ids is None:
            raise click.UsageError("--id-column uri: the embeddings have no 'uri' column")
        mapped = map_images(captions, ids, mapping)
    except (CaptionError, EmbeddingsError, EvaluationError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"{len(captions)} captions of {captions.num_images} images; {len(emb)} embeddings "
               f"(dim {emb.dim}); {captions.num_images - len(mapped.missing)} images matched ({mapped.method})",
               err=True)

    from encoders.lightningdot import LightningDOT

    model = LightningDOT.load(checkpoint, encoder_config, random_weights=random_weights, seed=seed, device=device,
                              dtype=dtype, vocab=vocab)
    dev = str(model.device)
    if model.config.project_dim != emb.dim:
        raise click.ClickException(f"the text tower gives {model.config.project_dim}-d vectors, the embeddings are "
                                   f"{emb.dim}-d")
    mismatch = [m for m in emb.models if m != model.fingerprint]
    if mismatch and not ignore_model_mismatch:
        raise click.ClickException(
            f"the embeddings were made by model(s) {emb.models}, the text tower is {model.fingerprint}: recall "
            f"would be meaningless (pass --ignore-model-mismatch to evaluate anyway)")

    search, index_info = None, None
    if index_root:
        idx, index_info = open_index(index_root, nprobe)
        if index_info.get("model") and index_info["model"] != model.fingerprint:
            msg = f"the index was built from model {index_info['model']}, the text tower is {model.fingerprint}"
            if not ignore_model_mismatch:
                raise click.ClickException(msg + " (pass --ignore-model-mismatch to evaluate anyway)")
        search = index_search(idx)

    rerank = load_reranking(rerank_checkpoint, regions_path, rerank_config, rerank_head, top_m,
                            model.tokenizer().vocab_file, dev, dtype) if rerank_checkpoint else None

    t0 = time.perf_counter()
    text_vectors = encode_unique(model, captions.captions, batch_size)
    encode_s = time.perf_counter() - t0
    click.echo(f"encoded {len(captions)} captions on {dev} in {encode_s:.1f}s "
               f"({len(captions) / max(encode_s, 1e-9):.0f}/s)", err=True)

    try:
        report = evaluate(captions, emb, mapped, text_vectors, k_list, gallery=gallery, missing=missing,
                          search=search, index_info=index_info, reference=reference,
                          max_bytes=max_memory_mb << 20, rerank=rerank)
    except EvaluationError as e:
        raise click.ClickException(str(e)) from e
    report["model"] = {"fingerprint": model.fingerprint, "source": model.source, "device": dev, "dtype": dtype,
                       "random_weights": random_weights}
    if mismatch:
        report["warnings"].append(f"model mismatch ignored: embeddings {emb.models}, text tower {model.fingerprint}")
    if random_weights:
        report["warnings"].append("random text tower (--random-weights): the figures say nothing about a model")
    report["timings"]["encode_captions_s"] = encode_s
    report["timings"]["total_s"] = time.perf_counter() - t_start

    click.echo(format_table(report))
    if json_path:
        write_json(report, json_path)
        click.echo(f"report: {json_path}", err=True)
    if plot_path:
        plot(report, plot_path)
        click.echo(f"plot: {plot_path}", err=True)


if __name__ == "__main__":
    sys.exit(eval_cmd())
