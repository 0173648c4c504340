"""The trial's resumable sampler."""

from qa_ray.training.trial import ResumableSampler


def test_the_sampler_follows_train_seed_and_skips_where_a_resumed_trial_left_off():
    data = list(range(40))
    order = {s: list(ResumableSampler(data, num_replicas=1, rank=0, seed=s)) for s in (1, 2)}
    assert order[1] != order[2] and sorted(order[1]) == data
    again = ResumableSampler(data, num_replicas=1, rank=0, seed=1)
    assert list(again) == order[1]
    again.skip = 15
    assert list(again) == order[1][15:]
    assert list(again) == order[1]  # the skip applies once
    ranks = [list(ResumableSampler(data, num_replicas=2, rank=r, seed=1)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == data
