import torch

from rbwa.data.loader import PAD, BatchLoader, channel_stats, crop_flip, steps_per_epoch


def _images(n=6, size=8):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_crop_is_a_crop_of_the_padded_image():
    x = _images()
    dy = torch.tensor([0, 8, 4, 1, 7, 3])
    dx = torch.tensor([8, 0, 4, 2, 5, 6])
    out = crop_flip(x, dy, dx, torch.zeros(6, dtype=torch.bool))
    padded = torch.nn.functional.pad(x, (PAD,) * 4)
    for i in range(6):
        assert torch.equal(out[i], padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8])
    assert torch.equal(crop_flip(x, torch.full((6,), PAD), torch.full((6,), PAD), torch.zeros(6, dtype=torch.bool)), x)


def test_flip_mirrors_only_where_asked():
    x = _images()
    flip = torch.tensor([True, False, True, False, False, True])
    out = crop_flip(x, torch.full((6,), PAD), torch.full((6,), PAD), flip)
    for i in range(6):
        assert torch.equal(out[i], x[i].flip(-1) if flip[i] else x[i])


def test_labels_follow_their_images_and_every_image_is_seen_once():
    n = 50
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 3, 4, 4).contiguous()
    labels = torch.arange(n)
    mean, std = torch.zeros(3), torch.ones(3) / 255  # normalised value == pixel value
    loader = BatchLoader(images, labels, 16, mean, std, shuffle=True, seed=3)
    seen = []
    for x, y in loader:
        assert torch.equal(x[:, 0, 0, 0].long(), y)
        seen += y.tolist()
    assert sorted(seen) == list(range(n))  # 50 = 3 * 16 + 2: the last batch of 2 is kept
    assert len(loader) == 4
    odd = BatchLoader(images[:49], labels[:49], 16, mean, std, shuffle=True, seed=3)  # 49 = 3 * 16 + 1
    seen = [i for _, y in odd for i in y.tolist()]
    assert len(odd) == 3 and len(seen) == len(set(seen)) == 48  # a last batch of one is dropped


def test_augmented_batches_keep_labels_with_images():
    n = 32
    images = (torch.arange(n, dtype=torch.uint8) + 1)[:, None, None, None].expand(n, 3, 8, 8).contiguous()
    loader = BatchLoader(images, torch.arange(n), 8, torch.zeros(3), torch.ones(3) / 255, shuffle=True,
                         augment=True, seed=1)
    for x, y in loader:
        # the centre pixel survives any crop with a 4-pixel shift of an 8x8 image: it is the image's own value
        assert torch.equal(x[:, 0, 3:5, 3:5].amax(dim=(1, 2)).long(), y + 1)


def test_same_seed_same_batches():
    x = _images(40)
    y = torch.arange(40)
    a = [b for _, b in BatchLoader(x, y, 8, torch.zeros(3), torch.ones(3), shuffle=True, augment=True, seed=7)]
    b = [b for _, b in BatchLoader(x, y, 8, torch.zeros(3), torch.ones(3), shuffle=True, augment=True, seed=7)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_steps_per_epoch_drops_a_last_batch_of_one():
    assert steps_per_epoch(50_000, 64) == 782
    assert steps_per_epoch(65, 64) == 1
    assert steps_per_epoch(66, 64) == 2
    assert steps_per_epoch(128, 64) == 2


def test_channel_stats_by_hand():
    images = torch.zeros(2, 3, 1, 1, dtype=torch.uint8)
    images[1] = 255
    mean, std = channel_stats(images)
    torch.testing.assert_close(mean, torch.full((3,), 0.5))
    torch.testing.assert_close(std, torch.full((3,), 0.5**0.5), atol=1e-6, rtol=0)


def test_ranks_share_every_global_batch_exactly():
    x = _images(40)
    y = torch.arange(40)
    kw = {"mean": torch.zeros(3), "std": torch.ones(3), "shuffle": True, "augment": True, "seed": 5}
    whole = list(BatchLoader(x, y, 12, **kw))
    shards = [list(BatchLoader(x, y, 12, rank=r, world=2, **kw)) for r in range(2)]
    assert len(whole) == len(shards[0]) == len(shards[1]) == 4
    for (xa, ya), (x0, y0), (x1, y1) in zip(whole, *shards):
        assert torch.equal(torch.cat([y0, y1]), ya) and torch.equal(torch.cat([x0, x1]), xa)


def test_uneven_last_batch_under_several_processes():
    from rbwa.data.loader import share, steps_per_epoch

    # 66 images, batch 64, 4 processes: the last batch (2 images) cannot give every process 2: dropped for all
    assert steps_per_epoch(66, 64, world=4) == 1 and steps_per_epoch(66, 64) == 2 and steps_per_epoch(65, 64) == 1
    assert [share(128, 141, r, 2) for r in (0, 1)] == [(128, 134), (134, 141)]
    images, labels = torch.zeros(141, 3, 2, 2, dtype=torch.uint8), torch.arange(141)
    mean, std = torch.zeros(3), torch.ones(3)
    weights = [BatchLoader(images, labels, 32, mean, std, shuffle=True, rank=r, world=2).loss_weights() for r in (0, 1)]
    # full batches split 16 + 16: weight 1; the last, 6 + 7 of 13: 6 x 2 / 13 and 7 x 2 / 13, so that the mean
    # over processes of (weight x mean loss of the share) is the mean loss of the 13 images
    assert weights[0] == [1.0] * 4 + [12 / 13] and weights[1] == [1.0] * 4 + [14 / 13]
    sizes = [[len(y) for _, y in BatchLoader(images, labels, 32, mean, std, shuffle=True, rank=r, world=2)]
             for r in (0, 1)]
    assert sizes == [[16] * 4 + [6], [16] * 4 + [7]]
