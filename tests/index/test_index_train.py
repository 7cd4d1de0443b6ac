"""Training the empty index: block-wise transforms train the same index as faiss's own IndexPreTransform.train."""

import faiss
import numpy as np
import pytest

from index.train import train_in_blocks
from tests.helpers_index import write_embeddings


@pytest.mark.parametrize("factory", ["PCA16,IVF32,SQ8", "OPQ8_32,IVF32,PQ8np", "PCAR24,IVF16,PQ12x4fs", "IVF32,SQ8"])
def test_block_wise_training_matches_faiss(factory, one_faiss_thread):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3000, 8)) @ rng.standard_normal((8, 64)) + 0.1 * rng.standard_normal((3000, 64)))
    x = x.astype(np.float32)
    ours, theirs = (faiss.index_factory(64, factory, faiss.METRIC_INNER_PRODUCT) for _ in range(2))
    for index in (ours, theirs):
        faiss.extract_index_ivf(index).cp.seed = 5
    train_in_blocks(ours, x, block=700)  # blocks that do not divide the sample
    theirs.train(x)
    assert ours.is_trained and theirs.is_trained
    if isinstance(ours, faiss.IndexPreTransform):
        for i in range(ours.chain.size()):
            a, b = (faiss.downcast_VectorTransform(ix.chain.at(i)) for ix in (ours, theirs))
            np.testing.assert_allclose(faiss.vector_to_array(a.A), faiss.vector_to_array(b.A), rtol=0, atol=1e-5)
    cq = [faiss.extract_index_ivf(ix).quantizer.reconstruct_n(0, 16) for ix in (ours, theirs)]
    np.testing.assert_allclose(cq[0], cq[1], rtol=0, atol=1e-3)
    for index in (ours, theirs):
        index.add(x)
        faiss.extract_index_ivf(index).nprobe = 4
    found = [index.search(x[:200], 10)[1] for index in (ours, theirs)]
    assert (found[0] == found[1]).mean() > 0.99


@pytest.mark.parametrize("factory", ["PCA16,IVF32,SQ8", "OPQ8_32,IVF32,PQ8np"])
def test_training_from_source_reads_through_the_pretrained_transform(tmp_path, factory, one_faiss_thread):
    """A pre-transform trains on a seeded subset of the training rows, then the sub-index trains on every training
    row read through it: the same index as faiss's own training with that transform trained first."""
    from index.source import EmbeddingSource, read_rows
    from index.train import train_from_source

    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3000, 8)) @ rng.standard_normal((8, 64)) + 0.1 * rng.standard_normal((3000, 64)))
    x = x.astype(np.float32)
    write_embeddings(tmp_path / "a.parquet", x, row_group_size=400)
    source = EmbeddingSource.open([str(tmp_path / "a.parquet")])
    rows = np.sort(rng.choice(3000, size=2500, replace=False))
    ours = train_from_source(factory, source, rows, seed=6, pretrain_rows=900)
    first = np.sort(np.random.default_rng(6).choice(rows, size=900, replace=False))

    theirs = faiss.index_factory(64, factory, faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(theirs).cp.seed = 6
    faiss.extract_index_ivf(theirs).cp.niter = faiss.extract_index_ivf(ours).cp.niter
    vt = faiss.downcast_VectorTransform(theirs.chain.at(0))
    if isinstance(vt, faiss.OPQMatrix):
        vt.niter = 8
    vt.train(x[first])
    theirs.train(x[rows])  # faiss trains only what is untrained: the sub-index, on x[rows] through the transform
    np.testing.assert_allclose(faiss.vector_to_array(faiss.downcast_VectorTransform(ours.chain.at(0)).A),
                               faiss.vector_to_array(vt.A), rtol=0, atol=1e-5)
    cq = [faiss.extract_index_ivf(ix).quantizer.reconstruct_n(0, 32) for ix in (ours, theirs)]
    np.testing.assert_allclose(cq[0], cq[1], rtol=0, atol=1e-3)
    reduced = read_rows(source, rows[:50], through=lambda v: vt.apply(v), width=vt.d_out)["embedding"]
    assert reduced.shape == (50, vt.d_out)
    np.testing.assert_allclose(reduced, vt.apply(x[rows[:50]]), rtol=0, atol=1e-5)
