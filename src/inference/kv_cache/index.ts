/**
 * kv_cache: the paged KV-cache bookkeeping. A fixed pool of fixed-size blocks sized from a
 * memory budget, per-sequence block tables, reference counts with copy-on-write, and prefix
 * caching of full blocks with LRU eviction. Pure bookkeeping: imports no tensor code (the
 * runner owns the K/V tensors and follows the block ids and copies given here).
 */
export { BlockManager, type BlockManagerOptions, type Allocation, type AppendResult, type BlockCopy, type KvUsage, type PrefixCacheStats } from "./block_manager.js";
export { blocksForBudget, kvBlockBytes, type KvCacheShape } from "./budget.js";
