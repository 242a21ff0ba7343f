#!/usr/bin/env node
// Reference UnixFS tooling built on the JS IPFS stack (ipfs-unixfs-importer /
// ipfs-unixfs-exporter / @ipld/car). Used to cross-check CIDs, CAR files and
// file contents produced by the Rust implementation.
//
//   node unixfs.mjs add PATH [--cid-version N] [--raw-leaves | --no-raw-leaves]
//                            [--chunk-size N | --rabin MIN-AVG-MAX] [--max-links N] [--trickle]
//                            [--profile unixfs-v0-2015|unixfs-v1-2025] [--car OUT.car]
//   node unixfs.mjs car-check FILE.car
//   node unixfs.mjs car-cat FILE.car [PATH-INSIDE]

import { once } from 'node:events'
import fs from 'node:fs'
import path from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { parseArgs } from 'node:util'

import { CarReader, CarWriter } from '@ipld/car'
import * as dagPb from '@ipld/dag-pb'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { exporter } from 'ipfs-unixfs-exporter'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize, rabin } from 'ipfs-unixfs-importer/chunker'
import { balanced, trickle } from 'ipfs-unixfs-importer/layout'
import { equals } from 'multiformats/bytes'
import * as raw from 'multiformats/codecs/raw'
import { identity } from 'multiformats/hashes/identity'
import { sha256 } from 'multiformats/hashes/sha2'

const USAGE = `usage:
  node unixfs.mjs add PATH [--cid-version N] [--raw-leaves | --no-raw-leaves]
                           [--chunk-size N | --rabin MIN-AVG-MAX] [--max-links N] [--trickle]
                           [--profile unixfs-v0-2015|unixfs-v1-2025] [--car OUT.car]
  node unixfs.mjs car-check FILE.car
  node unixfs.mjs car-cat FILE.car [PATH-INSIDE]`

class UsageError extends Error {}

// Import settings per IPIP-499 profile.
const PROFILES = {
  // kubo's historical `ipfs add` defaults
  'unixfs-v0-2015': { cidVersion: 0, rawLeaves: false, chunkSize: 262144, maxLinks: 174, shardSplitStrategy: 'links-bytes' },
  'unixfs-v1-2025': { cidVersion: 1, rawLeaves: true, chunkSize: 1048576, maxLinks: 1024, shardSplitStrategy: 'block-bytes' }
}
const DEFAULT_PROFILE = 'unixfs-v0-2015'
const TRICKLE_LAYER_REPEAT = 4 // kubo/boxo trickle "depthRepeat"
const HAMT_FANOUT_BITS = 8 // 256-way HAMT shards
const HAMT_THRESHOLD_BYTES = 262144

function parseIntArg (name, value, min) {
  if (!/^\d+$/.test(value)) throw new UsageError(`--${name} expects a non-negative integer, got '${value}'`)
  const n = Number(value)
  if (n < min) throw new UsageError(`--${name} must be >= ${min}`)
  return n
}

/** Turn `add` CLI flags into ipfs-unixfs-importer options (kubo-compatible). */
function importerOptions (flags) {
  const profileName = flags.profile
  if (profileName != null && PROFILES[profileName] == null) {
    throw new UsageError(`unknown profile '${profileName}'`)
  }
  const base = PROFILES[profileName ?? DEFAULT_PROFILE]

  let cidVersion = base.cidVersion
  let rawLeaves = base.rawLeaves
  if (flags['cid-version'] != null) {
    cidVersion = parseIntArg('cid-version', flags['cid-version'], 0)
    if (cidVersion > 1) throw new UsageError('--cid-version must be 0 or 1')
    rawLeaves = cidVersion === 1 // like kubo: CIDv1 implies raw leaves
  }
  if (flags['raw-leaves'] && flags['no-raw-leaves']) {
    throw new UsageError('--raw-leaves and --no-raw-leaves are mutually exclusive')
  }
  if (flags['raw-leaves']) rawLeaves = true
  if (flags['no-raw-leaves']) rawLeaves = false

  const chunkSize = flags['chunk-size'] != null ? parseIntArg('chunk-size', flags['chunk-size'], 1) : base.chunkSize
  const maxLinks = flags['max-links'] != null ? parseIntArg('max-links', flags['max-links'], 2) : base.maxLinks

  let chunker = fixedSize({ chunkSize })
  if (flags.rabin != null) {
    // rabin-wasm's Rabin chunker: kubo's algorithm over another polynomial.
    if (flags['chunk-size'] != null) throw new UsageError('--chunk-size and --rabin are mutually exclusive')
    const bounds = flags.rabin.split('-')
    if (bounds.length !== 3) throw new UsageError('--rabin expects MIN-AVG-MAX')
    const [minChunkSize, avgChunkSize, maxChunkSize] = bounds.map(b => parseIntArg('rabin', b, 16))
    chunker = rabin({ minChunkSize, avgChunkSize, maxChunkSize })
  }

  const opts = {
    cidVersion,
    rawLeaves,
    chunker,
    shardFanoutBits: HAMT_FANOUT_BITS,
    shardSplitThresholdBytes: HAMT_THRESHOLD_BYTES,
    shardSplitStrategy: base.shardSplitStrategy,
    wrapWithDirectory: false
  }
  if (profileName != null) opts.profile = profileName

  if (flags.trickle) {
    // kubo's trickle DAG: UnixFS leaves of type 'raw' (when not using raw
    // blocks) and the root is never collapsed into a single leaf.
    opts.layout = trickle({ maxChildrenPerNode: maxLinks, layerRepeat: TRICKLE_LAYER_REPEAT })
    opts.leafType = 'raw'
    opts.reduceSingleLeafToSelf = false
  } else {
    opts.layout = balanced({ maxChildrenPerNode: maxLinks })
    opts.leafType = 'file'
    opts.reduceSingleLeafToSelf = true
  }
  return opts
}

// Lazily opened file stream, so large trees don't hold many descriptors open.
function fileContent (absPath) {
  return (async function * () {
    yield * fs.createReadStream(absPath, { highWaterMark: 1 << 20 })
  })()
}

function byteOrder (a, b) {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'))
}

// Import candidates for a directory tree rooted at `rootName`.
async function * walkDir (absDir, relDir) {
  yield { path: relDir }
  const entries = await fs.promises.readdir(absDir, { withFileTypes: true })
  entries.sort((a, b) => byteOrder(a.name, b.name))
  for (const ent of entries) {
    const abs = path.join(absDir, ent.name)
    const rel = `${relDir}/${ent.name}`
    if (ent.isDirectory()) {
      yield * walkDir(abs, rel)
    } else if (ent.isFile()) {
      yield { path: rel, content: fileContent(abs) }
    } else if (ent.isSymbolicLink()) {
      yield { path: rel, link: await fs.promises.readlink(abs) }
    } else {
      throw new Error(`unsupported file type: ${abs}`)
    }
  }
}

async function getBlock (blockstore, cid) {
  const parts = []
  for await (const part of blockstore.get(cid)) parts.push(part)
  return parts.length === 1 ? parts[0] : Buffer.concat(parts)
}

// Every block reachable from `root`, depth-first pre-order, each once.
async function * dagBlocks (blockstore, root) {
  const seen = new Set()
  const stack = [root]
  while (stack.length > 0) {
    const cid = stack.pop()
    const key = cid.toString()
    if (seen.has(key)) continue
    seen.add(key)
    const bytes = await getBlock(blockstore, cid)
    yield { cid, bytes }
    if (cid.code === dagPb.code) {
      const links = dagPb.decode(bytes).Links
      for (let i = links.length - 1; i >= 0; i--) stack.push(links[i].Hash)
    } else if (cid.code !== raw.code) {
      throw new Error(`unexpected codec 0x${cid.code.toString(16)} in ${key}`)
    }
  }
}

async function writeCar (outPath, blockstore, root) {
  const { writer, out } = CarWriter.create([root])
  const written = pipeline(Readable.from(out), fs.createWriteStream(outPath))
  for await (const block of dagBlocks(blockstore, root)) {
    await writer.put(block)
  }
  await writer.close()
  await written
}

async function cmdAdd (argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      'cid-version': { type: 'string' },
      'raw-leaves': { type: 'boolean' },
      'no-raw-leaves': { type: 'boolean' },
      'chunk-size': { type: 'string' },
      rabin: { type: 'string' },
      'max-links': { type: 'string' },
      trickle: { type: 'boolean' },
      profile: { type: 'string' },
      car: { type: 'string' }
    }
  })
  if (positionals.length !== 1) throw new UsageError('add expects exactly one PATH')
  const opts = importerOptions(values)

  const absPath = path.resolve(positionals[0])
  const stat = await fs.promises.stat(absPath)
  const rootName = path.basename(absPath) || 'root'
  let source
  if (stat.isDirectory()) {
    source = walkDir(absPath, rootName)
  } else if (stat.isFile()) {
    source = [{ path: rootName, content: fileContent(absPath) }]
  } else {
    throw new Error(`unsupported file type: ${absPath}`)
  }

  const blockstore = new MemoryBlockstore()
  let root
  for await (const entry of importer(source, blockstore, opts)) {
    if (entry.path === rootName) root = entry.cid
  }
  if (root == null) throw new Error('importer did not produce a root entry')

  if (values.car != null) await writeCar(values.car, blockstore, root)
  process.stdout.write(`${root}\n`)
}

async function verifyBlock (cid, bytes) {
  const mh = cid.multihash
  let digest
  if (mh.code === sha256.code) digest = await sha256.digest(bytes)
  else if (mh.code === identity.code) digest = identity.digest(bytes)
  else throw new Error(`unsupported multihash 0x${mh.code.toString(16)} in ${cid}`)
  if (!equals(digest.bytes, mh.bytes)) throw new Error(`hash mismatch for block ${cid}`)
}

async function cmdCarCheck (argv) {
  if (argv.length !== 1) throw new UsageError('car-check expects exactly one FILE.car')
  const reader = await CarReader.fromIterable(fs.createReadStream(argv[0]))
  const roots = (await reader.getRoots()).map(String)
  const cids = []
  for await (const { cid, bytes } of reader.blocks()) {
    await verifyBlock(cid, bytes)
    cids.push(cid.toString())
  }
  cids.sort()
  process.stdout.write(JSON.stringify({ roots, blocks: cids.length, cids }) + '\n')
}

async function cmdCarCat (argv) {
  if (argv.length < 1 || argv.length > 2) throw new UsageError('car-cat expects FILE.car [PATH-INSIDE]')
  const reader = await CarReader.fromIterable(fs.createReadStream(argv[0]))
  const roots = await reader.getRoots()
  if (roots.length !== 1) throw new Error(`expected exactly one root, found ${roots.length}`)
  const blockstore = new MemoryBlockstore()
  for await (const { cid, bytes } of reader.blocks()) {
    await blockstore.put(cid, bytes)
  }
  const inner = (argv[1] ?? '').split('/').filter(Boolean).join('/')
  const target = inner === '' ? roots[0].toString() : `${roots[0]}/${inner}`
  const entry = await exporter(target, blockstore)
  if (entry.type === 'directory') throw new Error(`${target} is a directory`)
  if (entry.type === 'object') throw new Error(`${target} is not a UnixFS file`)
  if (entry.type === 'file' && entry.unixfs.type !== 'file' && entry.unixfs.type !== 'raw') {
    throw new Error(`${target} is a UnixFS ${entry.unixfs.type}, not a file`)
  }
  for await (const chunk of entry.content()) {
    if (!process.stdout.write(chunk)) await once(process.stdout, 'drain')
  }
}

const COMMANDS = { add: cmdAdd, 'car-check': cmdCarCheck, 'car-cat': cmdCarCat }

async function main (argv) {
  const [cmd, ...rest] = argv
  if (cmd == null || cmd === '-h' || cmd === '--help') {
    process.stdout.write(USAGE + '\n')
    return
  }
  const fn = COMMANDS[cmd]
  if (fn == null) throw new UsageError(`unknown command '${cmd}'`)
  await fn(rest)
}

main(process.argv.slice(2)).catch(err => {
  const usage = err instanceof UsageError || String(err.code).startsWith('ERR_PARSE_ARGS')
  process.stderr.write(`unixfs.mjs: ${err.message}\n`)
  if (usage) process.stderr.write(USAGE + '\n')
  process.exitCode = usage ? 2 : 1
})

