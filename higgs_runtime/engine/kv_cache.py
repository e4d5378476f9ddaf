"""The paged KV cache: one pool of fixed-size blocks sized by a token budget, shared by all requests.

Device side: per layer a key pool and a value pool of shape (blocks, kv_heads, BLOCK_SIZE, head_dim),
a block table (one row per slot: the ids of its blocks, in order) and each slot's length. Block 0 is
scratch: unused table entries point at it, and the padding rows of a bucketed batch write into it.

Host side: a free list and reservations. A request is admitted only if the blocks it could ever
need (prompt plus its frame limit, capped at the per-request maximum) can be reserved, so it never
runs out half-way; blocks are then taken from the pool as it grows and all return when it ends.
"""

from __future__ import annotations

import torch

from .paged_attention import BLOCK_SIZE, blocks_for


class PagedKVCache:
    def __init__(self, config, num_slots: int, max_len: int, budget_tokens: int, device: torch.device,
                 dtype: torch.dtype, max_batch: int):
        self.num_blocks = budget_tokens // BLOCK_SIZE  # usable, scratch not counted
        self.max_blocks_per_seq = blocks_for(max_len)
        if self.num_blocks < self.max_blocks_per_seq:
            raise ValueError(f"a KV budget of {budget_tokens} tokens cannot hold one {max_len}-token sequence")
        self.max_len = max_len
        kv_heads, head_dim = config.num_key_value_heads, config.head_dim
        pool_shape = (self.num_blocks + 1, kv_heads, BLOCK_SIZE, head_dim)
        self.keys = [torch.zeros(pool_shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(pool_shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.scratch_slot = num_slots
        self.block_table = torch.zeros((num_slots + 1, self.max_blocks_per_seq), dtype=torch.long, device=device)
        self.lengths = torch.zeros(num_slots + 1, dtype=torch.long, device=device)
        # Gathered blocks of one layer, reused layer after layer: fixed addresses (CUDA graphs) and no
        # per-step allocation of fresh pages (which costs more than the copy on CPU).
        gathered = (max_batch * self.max_blocks_per_seq, kv_heads, BLOCK_SIZE, head_dim)
        self._gathered_keys = torch.empty(gathered, device=device, dtype=dtype)
        self._gathered_values = torch.empty(gathered, device=device, dtype=dtype)
        self._free = list(range(self.num_blocks, 0, -1))
        self._owned: dict[int, list[int]] = {}
        self._reserved: dict[int, int] = {}  # blocks promised to a slot and not yet taken

    # --- host bookkeeping (the scheduler thread) ---
    @property
    def blocks_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def blocks_available(self) -> int:
        return len(self._free) - sum(self._reserved.values())

    def reserve(self, slot: int, tokens: int) -> bool:
        """Promises `slot` enough blocks for `tokens` positions, if the pool can."""
        needed = blocks_for(min(tokens, self.max_len))
        if needed > self.blocks_available:
            return False
        self._owned[slot], self._reserved[slot] = [], needed
        return True

    def ensure(self, slot: int, tokens: int) -> None:
        """Gives `slot` blocks (from its reservation) until it can hold `tokens` positions."""
        owned = self._owned[slot]
        while len(owned) * BLOCK_SIZE < tokens:
            block = self._free.pop()
            self._reserved[slot] -= 1
            self.block_table[slot, len(owned)] = block
            owned.append(block)

    def release(self, slot: int) -> None:
        self._free += reversed(self._owned.pop(slot, []))
        self._reserved.pop(slot, None)
        self.block_table[slot] = 0
        self.lengths[slot] = 0

    # --- device side ---
    def store_prompt(self, slot: int, layer_keys: list[torch.Tensor], layer_values: list[torch.Tensor]) -> None:
        """Copies a prefilled prompt's keys and values, (kv_heads, length, head_dim) per layer, into the
        slot's blocks (which `ensure` must have given it)."""
        length = layer_keys[0].shape[1]
        count = blocks_for(length)
        blocks = torch.tensor(self._owned[slot][:count], device=self.lengths.device)
        padding = count * BLOCK_SIZE - length
        for pool, new in zip(self.keys + self.values, layer_keys + layer_values):
            padded = torch.nn.functional.pad(new, (0, 0, 0, padding))
            pool[blocks] = padded.view(new.shape[0], count, BLOCK_SIZE, new.shape[2]).transpose(0, 1)
        self.lengths[slot] = length

    def append(self, layer: int, block_rows: torch.Tensor, positions: torch.Tensor, key: torch.Tensor,
               value: torch.Tensor) -> None:
        """Writes one position per row. block_rows: (batch, max_blocks); positions: (batch,);
        key, value: (batch, kv_heads, head_dim)."""
        block = block_rows.gather(1, (positions // BLOCK_SIZE)[:, None])[:, 0]
        offset = positions % BLOCK_SIZE
        self.keys[layer][block, :, offset] = key
        self.values[layer][block, :, offset] = value

    def gather(self, layer: int, block_rows: torch.Tensor, num_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `num_blocks` blocks of each row: keys and values (batch, num_blocks, kv_heads,
        BLOCK_SIZE, head_dim), views into the gather buffers (valid until the next call)."""
        batch = block_rows.shape[0]
        index = block_rows[:, :num_blocks].reshape(-1)
        count = batch * num_blocks
        keys = torch.index_select(self.keys[layer], 0, index, out=self._gathered_keys[:count])
        values = torch.index_select(self.values[layer], 0, index, out=self._gathered_values[:count])
        shape = (batch, num_blocks) + keys.shape[1:]
        return keys.view(shape), values.view(shape)
