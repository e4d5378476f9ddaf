"""The paged KV cache: one pool of fixed-size blocks sized by a token budget, shared by all requests.

Device side: per layer a key pool and a value pool of shape (blocks, kv_heads, BLOCK_SIZE, head_dim),
a block table (one row per slot: the ids of its blocks, in order) and each slot's length. Block 0 is
scratch: unused table entries point at it, and the padding rows of a padded batch write into it.
Nothing else on the device is sized by what requests hold: the forward passes address the pools
through the block table (`batched_model`).

Host side: a free list, reservations and the prefix index. A request is admitted only if the blocks
it could ever need (prompt plus its frame limit, capped at the per-request maximum) can be reserved,
so it never runs out half-way; blocks are then taken from the pool as it grows. A request whose
prompt starts like an earlier one's starts with that request's cached blocks (shared, read-only:
it writes only past them). When a request ends its blocks return to the pool, except the prompt
blocks named in the prefix index, which stay cached while idle until the pool needs them, and the
blocks of a kept context (`contexts`), which a slot detaches and a later slot adopts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .paged_attention import BLOCK_SIZE, blocks_for
from .prefix_cache import PrefixIndex


@dataclass(frozen=True)
class LiveBlocks:
    """The blocks a decode step attends over, row after row: ids, the row each belongs to, and its
    index within that row's sequence. Built on the host between steps, used on the device."""

    ids: torch.Tensor
    rows: torch.Tensor
    positions: torch.Tensor

    @property
    def count(self) -> int:
        return self.ids.shape[0]


class PagedKVCache:
    def __init__(self, config, num_slots: int, max_len: int, budget_tokens: int, device: torch.device,
                 dtype: torch.dtype, prefix_cache_tokens: int | None = None):
        """`prefix_cache_tokens` bounds the idle cached prefix blocks (default: half the budget)."""
        self.num_blocks = budget_tokens // BLOCK_SIZE  # usable, scratch not counted
        self.max_blocks_per_seq = blocks_for(max_len)
        if self.num_blocks < self.max_blocks_per_seq:
            raise ValueError(f"a KV budget of {budget_tokens} tokens cannot hold one {max_len}-token sequence")
        self.max_len = max_len
        self.device = device
        kv_heads, head_dim = config.num_key_value_heads, config.head_dim
        pool_shape = (self.num_blocks + 1, kv_heads, BLOCK_SIZE, head_dim)
        self.keys = [torch.zeros(pool_shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(pool_shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.scratch_slot = num_slots
        self.block_table = torch.zeros((num_slots + 1, self.max_blocks_per_seq), dtype=torch.long, device=device)
        self.lengths = torch.zeros(num_slots + 1, dtype=torch.long, device=device)
        self._free = list(range(self.num_blocks, 0, -1))
        self._owned: dict[int, list[int]] = {}
        self._reserved: dict[int, int] = {}  # blocks promised to a slot and not yet taken
        self._users: dict[int, int] = {}  # requests using each block
        idle_tokens = budget_tokens // 2 if prefix_cache_tokens is None else prefix_cache_tokens
        self.prefixes = PrefixIndex(idle_tokens // BLOCK_SIZE)

    # --- host bookkeeping (the scheduler thread) ---
    @property
    def blocks_used(self) -> int:
        """Blocks holding keys and values: those of running requests and idle cached prefixes."""
        return self.num_blocks - len(self._free)

    @property
    def blocks_available(self) -> int:
        return len(self._free) + self.prefixes.idle_blocks - sum(self._reserved.values())

    def reserve(self, slot: int, tokens: int, adopted: int = 0) -> bool:
        """Promises `slot` enough blocks for `tokens` positions, if the pool can; `adopted` of them are
        blocks it will adopt from a kept context, which it holds already."""
        needed = max(0, blocks_for(min(tokens, self.max_len)) - adopted)
        if needed > self.blocks_available:
            return False
        self._owned[slot], self._reserved[slot] = [], needed
        return True

    def share(self, slot: int, cached: list[int]) -> None:
        """Starts the slot (which holds no block yet) with cached blocks of its prompt's prefix, in
        place of as many blocks of its reservation."""
        for block in cached:
            self.prefixes.take(block)
            self._users[block] = self._users.get(block, 0) + 1
        self.block_table[slot, :len(cached)] = torch.tensor(cached, dtype=torch.long)
        self._owned[slot] = list(cached)
        self._reserved[slot] -= len(cached)

    def ensure(self, slot: int, tokens: int) -> bool:
        """Gives `slot` blocks (from its reservation) until it can hold `tokens` positions; says
        whether it took any."""
        owned = self._owned[slot]
        grown = False
        while len(owned) * BLOCK_SIZE < tokens:
            block = self._free.pop() if self._free else self.prefixes.evict_oldest()
            self._reserved[slot] -= 1
            self._users[block] = 1
            self.block_table[slot, len(owned)] = block
            owned.append(block)
            grown = True
        return grown

    def remember_prefix(self, slot: int, names: list[bytes]) -> None:
        """Names the slot's first blocks (its prompt's full blocks, now computed) for later requests."""
        for name, block in zip(names, self._owned[slot]):
            self.prefixes.add(name, block)

    def release(self, slot: int) -> None:
        self.drop(self.detach(slot))

    def detach(self, slot: int) -> list[int]:
        """Takes the slot's blocks away from it, their keys and values kept (a kept context holds them
        now); the slot is free for another request."""
        blocks = self._owned.pop(slot, [])
        self._reserved.pop(slot, None)
        self.block_table[slot] = 0
        self.lengths[slot] = 0
        return blocks

    def reusable(self, blocks: list[int], tokens: int) -> int:
        """How many of the first `tokens` positions held in `blocks` a slot can adopt and write after:
        the block where writing resumes must be this holder's alone and not a named prefix (those are
        read-only), else it is left out and computed again."""
        if tokens % BLOCK_SIZE == 0:
            return tokens
        block = blocks[tokens // BLOCK_SIZE]
        if self._users[block] > 1 or self.prefixes.is_cached(block):
            return tokens - tokens % BLOCK_SIZE
        return tokens

    def adopt(self, slot: int, blocks: list[int], tokens: int) -> None:
        """Starts the slot (reserved, holding no block yet) with the blocks of its first `tokens`
        positions (`reusable` ones) out of `blocks`; the rest go back to the pool."""
        kept = blocks_for(tokens)
        self.block_table[slot, :kept] = torch.tensor(blocks[:kept], dtype=torch.long)
        self._owned[slot] = list(blocks[:kept])
        self.lengths[slot] = tokens
        self.drop(blocks[kept:])

    def drop(self, blocks: list[int]) -> None:
        """One holder fewer for each block; a block nobody holds is free (or an idle cached prefix)."""
        for block in reversed(blocks):
            self._users[block] -= 1
            if self._users[block]:
                continue
            del self._users[block]
            if self.prefixes.is_cached(block):
                self._free += self.prefixes.park(block)
            else:
                self._free.append(block)

    def live_blocks(self, slots: list[int], tokens: list[int]) -> LiveBlocks:
        """The blocks holding the first `tokens[row]` positions of each row's slot, row after row (a
        padding row's slot, the scratch slot, has the scratch block). A block shared by several rows
        (a cached prompt prefix) is listed once per row."""
        ids, rows, positions = [], [], []
        for row, (slot, length) in enumerate(zip(slots, tokens)):
            owned = [0] if slot == self.scratch_slot else self._owned[slot][:blocks_for(length)]
            ids += owned
            rows += [row] * len(owned)
            positions += range(len(owned))
        as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=self.device)  # noqa: E731
        return LiveBlocks(as_tensor(ids), as_tensor(rows), as_tensor(positions))

    def addresses(self, slot: int, start: int, end: int) -> tuple[list[int], list[int], list[int]]:
        """Host lists for a prefill of the slot's positions [start, end) (whose blocks `ensure` gave):
        the block and offset of each position, and the blocks holding positions [0, end)."""
        owned = self._owned[slot]
        positions = range(start, end)
        return ([owned[p // BLOCK_SIZE] for p in positions], [p % BLOCK_SIZE for p in positions],
                owned[:blocks_for(end)])
