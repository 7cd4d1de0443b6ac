"""``ldot search`` (text -> images through the live index) and ``ldot index-info`` (the live manifest)."""

from __future__ import annotations

import json

import click

from core.files import is_utf8, printable_id
from jobs.options import query_model_options, reranker_model_options


def _utf8_texts(ctx: click.Context, param: click.Parameter, texts: tuple[str, ...]) -> tuple[str, ...]:
    """A query the shell passed as bytes that are not UTF-8 reaches Python as lone surrogates: refuse it by name."""
    for text in texts:
        if not is_utf8(text):
            raise click.BadParameter(f"{printable_id(text)!r} is not valid UTF-8 text (bytes shown as %XX)")
    return texts


def model_mismatch(fingerprint: str, manifest: dict) -> str | None:
    """Why the query model cannot search this index version, or None when it is the model that embedded it."""
    index_model = manifest.get("model")
    if index_model and fingerprint != index_model:
        return (f"the query model ({fingerprint}) is not the model that embedded the index ({index_model}): "
                "scores across different models are meaningless")
    return None


@click.command("search")
@click.argument("root")
@click.argument("texts", nargs=-1, required=True, callback=_utf8_texts)
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Results per query.")
@query_model_options("Search")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.option("--html", "html_path", type=str, default=None, help="Write an HTML page with thumbnails here.")
@click.option("--rerank", "rerank_checkpoint", default=None,
              help="UNITER retrieval checkpoint: re-order the dot product's top M with this cross-encoder.")
@click.option("--rerank-top", "top_m", type=click.IntRange(min=1), default=20, show_default=True,
              help="M: candidates the dot product passes to the re-ranker (at least -k; default max(20, k)).")
@click.option("--regions", "regions_path", default=None,
              help="Region features of the indexed images (the --keep-regions table or a UNITER image DB).")
@reranker_model_options
def search_cmd(root: str, texts: tuple[str, ...], k: int, checkpoint: str | None, vocab: str | None,
               encoder_config: str | None, random_weights: bool, device: str, nprobe: int | None, force: bool,
               as_json: bool, html_path: str | None, rerank_checkpoint: str | None, top_m: int,
               regions_path: str | None, rerank_config: str | None, rerank_head: str) -> None:
    """Search the live version of index ROOT with one or more TEXTS (optionally re-ranked by UNITER)."""
    from index.search import SearchIndex

    top_m = _check_rerank_flags(rerank_checkpoint, regions_path, top_m, k)
    rerank = top_m > 0
    idx = SearchIndex.open(root, nprobe=nprobe)
    from encoders.lightningdot import LightningDOT

    model = LightningDOT.load(checkpoint, encoder_config, random_weights=random_weights, device=device, vocab=vocab)
    index_model = idx.manifest.get("model")
    msg = model_mismatch(model.fingerprint, idx.manifest)
    if msg:
        if not force:
            raise click.ClickException(msg + " (use --force to search anyway)")
        click.echo(f"warning: {msg}", err=True)
    if k > idx.ntotal:  # FAISS allocates k results per query: -k 100000000 would ask for gigabytes
        click.echo(f"note: -k {k} is more than the {idx.ntotal} vectors of the index; returning at most "
                   f"{max(idx.ntotal, 1)}", err=True)
        k = max(idx.ntotal, 1)
    if rerank:
        from index.rerank import PairScorer, RerankingSearch

        scorer = PairScorer.open(rerank_checkpoint, regions_path, config=rerank_config, head=rerank_head,
                                 device=str(model.device), vocab=model.tokenizer().vocab_file)
        search = RerankingSearch(idx, model, scorer, top_m=top_m)
        results = search.search(list(texts), k)
    else:
        res = idx.search(model.encode_captions(list(texts)), k)
        results = [res.records(q) for q in range(len(texts))]
    if html_path:
        import fsspec

        from index.html import render_results_html

        with fsspec.open(html_path, "w", encoding="utf-8") as f:
            f.write(render_results_html(list(texts), results, idx.manifest))
        click.echo(f"wrote {html_path}", err=True)
    if as_json:
        out = {"version": idx.version, "nprobe": idx.nprobe, "model": index_model,
               "queries": [{"text": t, "results": r} for t, r in zip(texts, results, strict=True)]}
        if rerank:
            out["rerank"] = {**search.scorer.describe(), "top_m": top_m}
        click.echo(json.dumps(out, indent=2))
        return
    for text, rows in zip(texts, results, strict=True):
        click.echo(f"{text}" + (f"  (re-ranked: top {top_m} by dot product, ordered by UNITER)" if rerank else ""))
        for r in rows:
            dot = f"  dot {r['dot_score']:9.4f} (#{r['dot_rank']})" if rerank else ""
            click.echo(f"  {r['rank']:>3}  {r['score']:10.4f}{dot}  {r['image_id']}  {r['uri']}")


def _check_rerank_flags(checkpoint: str | None, regions: str | None, top_m: int, k: int) -> int:
    """The M to re-rank (0: no re-ranking); refuses re-ranking flags without --rerank."""
    source = click.get_current_context().get_parameter_source
    if not checkpoint:
        given = [f for f, p in (("--regions", "regions_path"), ("--rerank-top", "top_m"),
                                ("--rerank-config", "rerank_config"), ("--rerank-head", "rerank_head"))
                 if source(p) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"{', '.join(given)} only apply with --rerank CHECKPOINT")
        return 0
    if not regions:
        raise click.UsageError("--rerank needs --regions DIR: the region features of the indexed images")
    if source("top_m") != click.core.ParameterSource.COMMANDLINE:
        return max(top_m, k)
    if top_m < k:
        raise click.UsageError(f"--rerank-top ({top_m}) must be at least -k ({k}): re-ranking orders only the top M")
    return top_m


@click.command("index-info")
@click.argument("root")
@click.option("--version", "version", default=None, help="A version other than the live one.")
@click.option("--verify", is_flag=True, help="Also load the index and verify every file's checksum.")
def index_info_cmd(root: str, version: str | None, verify: bool) -> None:
    """Print the live manifest of index ROOT (JSON)."""
    from index import layout

    manifest = layout.read_manifest(root, version) if version else layout.live_manifest(root)
    if verify:
        from index.search import SearchIndex

        SearchIndex.from_manifest(root, manifest)
        click.echo(f"verified {len(manifest['shards'])} shard(s), {manifest['count']} vectors", err=True)
    click.echo(json.dumps(manifest, indent=2))
