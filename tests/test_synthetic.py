"""The built-in synthetic domains: content, domain shift, determinism, parquet output and the cache."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import PIL.Image
import PIL.ImageFilter
import pytest

from infosam_hf.synthetic import (
    DOMAIN_VERSIONS,
    PAPER_DOMAINS,
    default_dataset_dir,
    ensure_synthetic_dataset,
    make_synthetic_instances,
    make_synthetic_sample,
    write_synthetic_dataset,
)


def _samples(domain, n=30, size=96, seed=0):
    rng = np.random.default_rng(seed)
    return [make_synthetic_sample(domain, size, rng) for _ in range(n)]


def _contrast(image, mask):
    """Colour distance between the object and a ring of background just around it."""
    pixels = np.asarray(image, np.float32)
    inside = np.asarray(mask) > 0
    ring = np.asarray(PIL.Image.fromarray(np.asarray(mask)).filter(PIL.ImageFilter.MaxFilter(9))) > 0
    ring &= ~inside
    return float(np.linalg.norm(pixels[inside].mean(0) - pixels[ring].mean(0)))


@pytest.mark.parametrize("domain", ["general", "specialised"])
def test_sample_types_sizes_and_objects(domain):
    samples = _samples(domain)
    fractions, centres = [], []
    for image, mask in samples:
        assert image.mode == "RGB" and mask.mode == "L" and image.size == mask.size == (96, 96)
        values = np.unique(np.asarray(mask))
        assert set(values.tolist()) <= {0, 255}
        fg = np.asarray(mask) > 0
        fractions.append(fg.mean())
        ys, xs = np.nonzero(fg)
        centres.append((xs.mean(), ys.mean()))
    fractions, centres = np.array(fractions), np.array(centres)
    # drawn for 5-40% of the image; ellipses and polygons inscribed in that box cover a bit less
    assert fractions.min() >= 0.02 and fractions.max() <= 0.42
    assert fractions.max() - fractions.min() > 0.2  # varied sizes
    assert centres.std(axis=0).min() > 5  # not always centred
    assert np.abs(centres - 48).max() > 15


def test_specialised_domain_is_shifted_low_contrast_and_textured():
    general, specialised = _samples("general"), _samples("specialised")
    general_contrast = np.median([_contrast(i, m) for i, m in general])
    special_contrast = np.median([_contrast(i, m) for i, m in specialised])
    assert general_contrast > 1.5 * special_contrast  # the object blends into its surroundings
    assert special_contrast > 20  # low, but still learnable

    def roughness(image, mask):  # high-frequency energy inside the object
        gray = np.asarray(image.convert("L"), np.float32)
        detail = np.abs(np.diff(gray, axis=1))[:, :-1][np.asarray(mask)[:, 1:-1] > 0]
        return detail.mean()

    assert np.median([roughness(*s) for s in specialised]) > 1.3 * np.median([roughness(*s) for s in general])


def test_deterministic_under_seed():
    a = make_synthetic_sample("general", 64, np.random.default_rng(5))
    b = make_synthetic_sample("general", 64, np.random.default_rng(5))
    c = make_synthetic_sample("general", 64, np.random.default_rng(6))
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))


def test_unknown_domain():
    with pytest.raises(ValueError, match="use one of"):
        make_synthetic_sample("medical", 64, np.random.default_rng(0))


def _digest(folder):
    return {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in sorted(os.listdir(folder))
        if not name.startswith(".")
    }


def test_write_parquet_shards_deterministic_and_streamable(tmp_path):
    from datasets import Image, load_dataset

    write_synthetic_dataset(tmp_path / "a", "specialised", num_train=5, num_test=3, image_size=48, seed=2)
    write_synthetic_dataset(tmp_path / "b", "specialised", num_train=5, num_test=3, image_size=48, seed=2)
    digest_a = _digest(tmp_path / "a")
    assert sorted(digest_a) == [
        "test-00000-of-00002.parquet",
        "test-00001-of-00002.parquet",
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ]
    assert digest_a == _digest(tmp_path / "b")  # byte-identical
    write_synthetic_dataset(tmp_path / "c", "specialised", num_train=5, num_test=3, image_size=48, seed=3)
    assert _digest(tmp_path / "c") != digest_a

    stream = load_dataset(
        "parquet", data_files={"train": str(tmp_path / "a" / "train-*.parquet")}, split="train", streaming=True
    )
    assert isinstance(stream.features["image"], Image) and isinstance(stream.features["label"], Image)
    rows = list(stream)
    assert len(rows) == 5 and rows[0]["image"].size == (48, 48) and rows[0]["label"].mode == "L"
    # the same samples whatever the sharding; an empty split writes no file
    one_shard = tmp_path / "one"
    write_synthetic_dataset(one_shard, "specialised", num_train=5, num_test=0, image_size=48, seed=2, num_shards=1)
    assert _digest(one_shard).keys() == {"train-00000-of-00001.parquet"}
    single = list(load_dataset("parquet", data_files=str(one_shard / "train-*.parquet"), split="train", streaming=True))
    assert [np.asarray(r["image"]).tobytes() for r in single] == [np.asarray(r["image"]).tobytes() for r in rows]


def test_write_never_overwrites(tmp_path):
    write_synthetic_dataset(tmp_path, "general", num_train=2, num_test=0, image_size=32, num_shards=1)
    before = _digest(tmp_path)
    with pytest.raises(FileExistsError, match="never overwrites"):
        write_synthetic_dataset(tmp_path, "general", num_train=2, num_test=0, image_size=32, seed=9, num_shards=1)
    assert _digest(tmp_path) == before


def test_ensure_creates_once_in_cache_and_respects_user_files(tmp_path, monkeypatch):
    monkeypatch.setenv("INFOSAM_HF_CACHE", str(tmp_path / "cache"))
    params = dict(image_size=32, num_train=4, num_test=2, seed=0)
    expected = default_dataset_dir("general", **params)
    assert str(expected).startswith(str(tmp_path / "cache"))
    path = ensure_synthetic_dataset("general", **params)
    assert path == expected and len(_digest(expected)) == 4
    stamp = {name: os.stat(path / name).st_mtime_ns for name in os.listdir(path)}
    assert ensure_synthetic_dataset("general", **params) == path  # reused, not regenerated
    assert {name: os.stat(path / name).st_mtime_ns for name in os.listdir(path)} == stamp
    assert [p for p in os.listdir(expected.parent)] == [expected.name]  # no staging folder left behind

    foreign = default_dataset_dir("specialised", **params)
    foreign.mkdir(parents=True)
    (foreign / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="left untouched"):
        ensure_synthetic_dataset("specialised", **params)
    assert os.listdir(foreign) == ["mine.txt"]


# sha256 of the pixels of a few samples, computed with the generator on main before the paper-regime domains were
# added (commit e0a7f24): the built-in SAM was pre-trained on these domains' pixels, which must never change.
ORIGINAL_PIXELS = {
    "general": ("bacd8d654f10fbbcef150488a0ffcecc4fa63fcf9102ab6b90bbb5de3939d182",
                "61446fa17d3aeb5b82738e390aed07e494733a09bf3706137f977855852b1ef0"),
    "specialised": ("8c2a0924a10e78f56208227f8b075ac1dd3073763631b6c5a3e6f9ef40c04a5d",
                    "b50ce57dbc2fa0074176a411c7857d885debde22e8aa3a3453470be4e8aa1eea"),
}


@pytest.mark.parametrize("domain", ["general", "specialised"])
def test_original_domains_are_byte_identical_to_main(domain, tmp_path):
    import io

    import pyarrow.parquet as pq

    rng, digest = np.random.default_rng(7), hashlib.sha256()
    for _ in range(4):
        for image in make_synthetic_sample(domain, 64, rng):
            digest.update(np.asarray(image).tobytes())
    for _ in range(2):
        for image in make_synthetic_instances(domain, 64, rng):
            digest.update(np.asarray(image).tobytes())
    # the data set files too: each domain's generator is seeded by its index in DOMAINS
    write_synthetic_dataset(tmp_path, domain, num_train=3, num_test=2, image_size=48, seed=4, num_shards=1)
    files = hashlib.sha256()
    for path in sorted(tmp_path.glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            for column in ("image", "label"):
                files.update(np.asarray(PIL.Image.open(io.BytesIO(row[column]["bytes"]))).tobytes())
    assert (digest.hexdigest(), files.hexdigest()) == ORIGINAL_PIXELS[domain]


def _box_fraction(mask):
    """Mask area / area of the mask's bounding box: what the paper's box prompt leaves open."""
    fg = np.asarray(mask) > 0
    ys, xs = np.nonzero(fg)
    return fg.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))


@pytest.mark.parametrize("domain", PAPER_DOMAINS)
def test_paper_domains_are_deterministic_and_binary(domain):
    a = _samples(domain, n=3, size=64, seed=5)
    b = _samples(domain, n=3, size=64, seed=5)
    c = _samples(domain, n=3, size=64, seed=6)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for pa, pb in zip(a, b) for x, y in zip(pa, pb))
    assert not np.array_equal(np.asarray(a[0][0]), np.asarray(c[0][0]))
    for image, mask in a:
        assert image.mode == "RGB" and mask.mode == "L" and image.size == mask.size == (64, 64)
        assert set(np.unique(np.asarray(mask)).tolist()) == {0, 255}  # never an empty mask


@pytest.mark.parametrize("domain", ["lesions", "roads"])
def test_lesions_and_roads_masks_are_far_from_their_box(domain):
    samples = _samples(domain, n=20, size=128)
    assert np.mean([_box_fraction(m) for _, m in samples]) < 0.5
    assert np.mean([_box_fraction(m) for _, m in _samples("specialised", n=20, size=128)]) > 0.5  # the contrast


def test_lesions_mask_is_the_spots_not_the_leaf():
    for image, mask in _samples("lesions", n=10, size=128):
        pixels, spots = np.asarray(image, np.float32), np.asarray(mask) > 0
        green = pixels[..., 1] > pixels[..., 0] + 20  # the healthy leaf around the spots
        assert green.sum() > 2 * spots.sum() and not (green & spots).any()
        assert pixels[spots][:, 1].mean() < pixels[green][:, 1].mean() - 40  # the spots are brown, plain to see


def test_camouflage_is_harder_than_specialised():
    camouflage = np.median([_contrast(i, m) for i, m in _samples("camouflage")])
    specialised = np.median([_contrast(i, m) for i, m in _samples("specialised")])
    assert camouflage < 0.6 * specialised  # a fainter tint than the specialised domain's


def test_paper_domains_have_their_own_version_and_one_mask_per_image(tmp_path):
    folder = default_dataset_dir("roads", num_train=4, num_test=2, image_size=32)
    assert f"-roads{DOMAIN_VERSIONS['roads']}-32px" in folder.name
    assert "-general-32px" in default_dataset_dir("general", num_train=4, num_test=2, image_size=32).name
    with pytest.raises(ValueError, match="max_objects=1"):
        make_synthetic_instances("lesions", 64, np.random.default_rng(0))
    with pytest.raises(ValueError, match="max_objects=1"):
        write_synthetic_dataset(tmp_path / "x", "roads", num_train=2, num_test=0, image_size=32, max_objects=3)
    assert not (tmp_path / "x").exists()
