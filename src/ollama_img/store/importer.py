"""Import a model folder into the store: one blob per tensor and per file, a config blob, a manifest.

Tensors are streamed shard by shard in file order (each source byte is read once, memory stays at two
8 MiB buffers), hashed in a helper thread while they are written, and flushed to disk by a publisher
thread while the next tensor is copied. The manifest is written last, after every blob it names is
durable, all under the shared store lock; so a `create` killed at any moment leaves no manifest
pointing at a missing blob, and re-running it reuses every blob already written.
"""

from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

from ollama_img.errors import UserError
from ollama_img.names import ModelName
from ollama_img.quantization import QuantRule, QuantType, quantize_weight
from ollama_img.store.additions import Additions, with_additions, write_additions
from ollama_img.store.blobs import (
    PLAIN_TENSOR_NAME,
    BlobRef,
    WrittenBlob,
    fsync_dir,
    write_bytes_blob,
    write_tensor_blob,
)
from ollama_img.store.config import ComponentInfo, ModelConfig, QuantizationRecord
from ollama_img.store.folder import FileItem, ImportPlan, Shard
from ollama_img.store.manifest import TENSOR_MEDIA_TYPE, Layer, Manifest, encode_manifest, media_type_for_file
from ollama_img.store.publisher import BlobPublisher
from ollama_img.store.safetensors_format import TensorEntry
from ollama_img.store.source import SafetensorsReader
from ollama_img.store.store import Store

# progress(bytes, tensors): called as tensor bytes are stored (bytes > 0) and as each tensor is done.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ImportResult:
    name: ModelName
    manifest: Manifest
    tensors: int
    bytes: int  # bytes of all layer blobs (tensors and files)
    new_blobs: int
    reused_blobs: int
    bytes_freed: int = 0  # blobs only the model this name replaced had used


@dataclass
class _Tally:
    new: int = 0
    reused: int = 0
    quantized: dict[str, int] = field(default_factory=dict)  # component -> tensors quantized

    def count(self, blob: WrittenBlob) -> WrittenBlob:
        if blob.new:
            self.new += 1
        else:
            self.reused += 1
        return blob


def import_folder(
    store: Store,
    name: ModelName | str,
    plan: ImportPlan,
    progress: ProgressCallback | None = None,
    hash_in_thread: bool = True,
    quantize: QuantType | None = None,
    additions: Additions | None = None,
) -> ImportResult:
    """Store everything `plan` lists under `name` (an existing model of that name is replaced).

    With `quantize`, the weights the architecture's rule selects are quantized on the way, one tensor
    in memory at a time. `additions` (a Modelfile's adapters, parameters, license) are stored after the
    weights, before the manifest.
    """
    name = name if isinstance(name, ModelName) else ModelName.parse(name)
    report = progress or (lambda _bytes, _tensors: None)
    tally = _Tally()
    quantizer = _Quantizer(quantize, plan.architecture.quantization_rule(), tally) if quantize else None
    layers: list[Layer] = []
    with store.writing():
        executor = ThreadPoolExecutor(1, thread_name_prefix="sha256") if hash_in_thread else None
        try:
            with BlobPublisher() as publisher:
                layers += [_store_file(store, item, tally) for item in plan.files]
                for component in plan.components:
                    layers += [_store_file(store, item, tally) for item in component.files]
                    for shard in component.shards:
                        layers += _store_shard(store, shard, report, executor, publisher, tally, quantizer)
                for blob in publisher.drain():
                    tally.count(blob)
        finally:
            if executor is not None:
                executor.shutdown()
        record = _config(plan, layers, quantizer)
        if additions is not None:
            added, new = write_additions(store, additions)
            tally.new += new
            tally.reused += len(added) - new
            layers += added
            record = with_additions(record, additions, layers)
        config = tally.count(write_bytes_blob(store.blobs_dir, record.encode()))
        fsync_dir(store.blobs_dir)
        raw = encode_manifest(layers, config.digest, config.size)
        previous = store.write_manifest(name, raw)
    freed = store.free_replaced(previous, raw)  # the blobs only the model this name named used
    manifest = Manifest(tuple(layers), record, config.digest, config.size, raw, name)
    return ImportResult(
        name=name,
        manifest=manifest,
        tensors=sum(1 for layer in layers if layer.is_tensor),
        bytes=sum(layer.size for layer in layers),
        new_blobs=tally.new,
        reused_blobs=tally.reused,
        bytes_freed=freed,
    )


def _store_file(store: Store, item: FileItem, tally: _Tally) -> Layer:
    try:
        data = item.path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {item.layer_name}: {exc.strerror or exc}") from None
    blob = tally.count(write_bytes_blob(store.blobs_dir, data))
    return Layer(item.layer_name, blob.digest, blob.size, media_type_for_file(item.layer_name))


def _store_shard(
    store: Store,
    shard: Shard,
    report: ProgressCallback,
    executor: Executor | None,
    publisher: BlobPublisher,
    tally: _Tally,
    quantizer: "_Quantizer | None" = None,
) -> list[Layer]:
    layers = []
    if shard.stored is not None:
        (tensor,) = shard.header.tensors
        if quantizer is None or not quantizer.selects(shard, tensor):
            # A tensor already in the store that stays as it is: the same blob, nothing read or written.
            tally.reused += 1
            report(tensor.nbytes, 1)
            return [_tensor_layer(shard, tensor, shard.stored)]
    try:
        reader = SafetensorsReader(shard.path, shard.header, shard.display)
    except OSError as exc:
        raise UserError(f"cannot read {shard.display}: {exc.strerror or exc}") from None
    with reader:
        for tensor in shard.header.tensors:
            chunks = _reporting(reader.chunks(tensor), report)
            if quantizer is not None and quantizer.selects(shard, tensor):
                tensors, metadata = quantizer.encode(shard, tensor, chunks)
            else:
                tensors, metadata = (
                    [(TensorEntry(PLAIN_TENSOR_NAME, tensor.dtype, tensor.shape), chunks)],
                    None,
                )
            blob: BlobRef = write_tensor_blob(
                store.blobs_dir, tensors, metadata, executor=executor, publisher=publisher
            )
            report(0, 1)
            layers.append(_tensor_layer(shard, tensor, blob))
    return layers


def _tensor_layer(shard: Shard, tensor, blob: BlobRef) -> Layer:
    """The manifest layer of a tensor: its logical name, dtype and shape, whatever its blob holds."""
    return Layer(
        name=_layer_name(shard, tensor),
        digest=blob.digest,
        size=blob.size,
        media_type=TENSOR_MEDIA_TYPE,
        dtype=tensor.dtype,
        shape=tensor.shape,
    )


def _layer_name(shard: Shard, tensor) -> str:
    """A tensor's layer name: `<component>/<tensor name as in the checkpoint>`."""
    return f"{shard.layer_prefix}/{tensor.name}"


@dataclass
class _Quantizer:
    """Quantizes the tensors `rule` selects to `quant`, counting them per component for the config."""

    quant: QuantType
    rule: QuantRule
    tally: _Tally

    def selects(self, shard: Shard, tensor) -> bool:
        """Whether the rule quantizes this tensor of the shard."""
        return self.rule.selects(_layer_name(shard, tensor), tensor.dtype, tensor.shape, self.quant)

    def encode(self, shard: Shard, tensor, chunks: Iterator) -> tuple[list, dict[str, str]]:
        """Quantize the tensor as its chunks stream in: the blob's tensors and metadata."""
        parts = quantize_weight(chunks, tensor.dtype, tensor.shape, self.quant)
        component = shard.layer_prefix
        self.tally.quantized[component] = self.tally.quantized.get(component, 0) + 1
        tensors = [
            (
                TensorEntry(name, dtype, (sum(b.shape[0] for b in blocks), *blocks[0].shape[1:])),
                _bytes_of(blocks),
            )
            for name, dtype, blocks in parts
        ]
        return tensors, self.quant.metadata()


def _bytes_of(blocks: list) -> list[memoryview]:
    return [memoryview(block).cast("B") for block in blocks]


def _reporting(chunks: Iterator, report: ProgressCallback) -> Iterator:
    for chunk in chunks:
        yield chunk
        report(len(chunk), 0)


def _config(plan: ImportPlan, layers: list[Layer], quantizer: _Quantizer | None = None) -> ModelConfig:
    """The config blob's record: what `show` prints, what the loader needs to pick the architecture, and
    what the engine checks requests against."""
    components = {}
    for component in plan.components:
        own = [layer for layer in layers if layer.component == component.name]
        components[component.name] = ComponentInfo(
            class_name=component.class_name,
            parameters=component.parameters,
            size=sum(layer.size for layer in own),
            dtypes=tuple(component.dtypes),
        )
    quantization = plan.quantization  # weights that arrived quantized (a converted ollama model)
    if quantizer is not None:
        quant = quantizer.quant
        quantization = QuantizationRecord(
            type=quant.name,
            mode=quant.mode,
            bits=quant.bits,
            group_size=quant.group_size,
            rule=quantizer.rule.text,
            tensors=dict(quantizer.tally.quantized),
        )
    return ModelConfig(
        architecture=plan.architecture.class_name,
        family=plan.architecture.family,
        format="diffusers",
        components=components,
        parameter_count=sum(c.parameters for c in plan.components),
        quantization=quantization,
        capabilities=plan.capabilities,
        total_size=sum(layer.size for layer in layers),
    )
