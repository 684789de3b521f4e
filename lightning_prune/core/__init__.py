"""The pure-PyTorch core of lightning_prune: the functional API behind the callbacks, usable without a Trainer.

Grouped by engine:

* :mod:`lightning_prune.core.unstructured`: scores (l1, l2, lamp), exact-count selection (``select``), masks and
  the ``torch.nn.utils.prune`` reparametrisation (``masks``, ``reparam``), N:M patterns (``nm``);
* :mod:`lightning_prune.core.channel`: channel pruning through torch-pruning's DepGraph (``pruner``),
  importance criteria, reshape-on-load, optimizer remapping (``optim``), the speed-up search, regularisation;
* shared: ``schedules``, ``measure``, ``compress`` (+ ``bitpack``), ``export``, ``sensitivity``, ``distill`` and
  ``patterns`` (layers by name or type).

Every public function and class is importable from here too (``from lightning_prune.core import compute_masks``),
resolved lazily so that ``import lightning_prune.core`` loads neither torch-pruning nor anything unused; the
two functions named like their module are reached through it (``core.export.export``, ``core.measure.measure``). Nothing
under ``lightning_prune.core`` imports Lightning, torchvision or torchmetrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_prune.core._lazy import lazy_module

# public name -> the module that defines it
_LAZY: dict[str, str] = {
    # bitpack
    "BitOrder": "lightning_prune.core.bitpack",
    "pack_bits": "lightning_prune.core.bitpack",
    "pack_mask": "lightning_prune.core.bitpack",
    "unpack_bits": "lightning_prune.core.bitpack",
    "unpack_mask": "lightning_prune.core.bitpack",
    # channel.applying
    "ChannelPruningError": "lightning_prune.core.channel.applying",
    "StepResult": "lightning_prune.core.channel.applying",
    "apply_plan": "lightning_prune.core.channel.applying",
    "check_forward": "lightning_prune.core.channel.applying",
    # channel.decoder
    "ActivationStats": "lightning_prune.core.channel.decoder",
    "DECODER_CRITERIA": "lightning_prune.core.channel.decoder",
    "DecoderPruner": "lightning_prune.core.channel.decoder",
    "DecoderStepResult": "lightning_prune.core.channel.decoder",
    "DecoderWidths": "lightning_prune.core.channel.decoder",
    "check_decoder": "lightning_prune.core.channel.decoder",
    "config_widths": "lightning_prune.core.channel.decoder",
    "decoder_widths": "lightning_prune.core.channel.decoder",
    "find_decoders": "lightning_prune.core.channel.decoder",
    "group_scores": "lightning_prune.core.channel.decoder",
    "kept_channels": "lightning_prune.core.channel.decoder",
    "kept_groups": "lightning_prune.core.channel.decoder",
    "layer_widths": "lightning_prune.core.channel.decoder",
    "mlp_scores": "lightning_prune.core.channel.decoder",
    "prune_kv_groups": "lightning_prune.core.channel.decoder",
    "prune_mlp": "lightning_prune.core.channel.decoder",
    "refuse_decoders": "lightning_prune.core.channel.decoder",
    "set_config_widths": "lightning_prune.core.channel.decoder",
    "sync_attention_attrs": "lightning_prune.core.channel.decoder",
    "unsupported_parameters": "lightning_prune.core.channel.decoder",
    # channel.decoder_event
    "run_decoder_event": "lightning_prune.core.channel.decoder_event",
    "snapshot_configs": "lightning_prune.core.channel.decoder_event",
    "snapshot_pruner": "lightning_prune.core.channel.decoder_event",
    # channel.decoder_hidden
    "hidden_entries": "lightning_prune.core.channel.decoder_hidden",
    "hidden_scores": "lightning_prune.core.channel.decoder_hidden",
    "output_heads": "lightning_prune.core.channel.decoder_hidden",
    "prune_hidden": "lightning_prune.core.channel.decoder_hidden",
    "sync_hidden_attrs": "lightning_prune.core.channel.decoder_hidden",
    # channel.decoder_io
    "head_pruning_unsupported": "lightning_prune.core.channel.decoder_io",
    "pretrained_model": "lightning_prune.core.channel.decoder_io",
    "rebuilt_shape_mismatches": "lightning_prune.core.channel.decoder_io",
    "reshape_decoder_to_state_dict": "lightning_prune.core.channel.decoder_io",
    "save_pretrained": "lightning_prune.core.channel.decoder_io",
    # channel.gradients
    "GradientSum": "lightning_prune.core.channel.gradients",
    # channel.importance
    "IMPORTANCES": "lightning_prune.core.channel.importance",
    "ImportanceName": "lightning_prune.core.channel.importance",
    "ImportanceSpec": "lightning_prune.core.channel.importance",
    "build_importance": "lightning_prune.core.channel.importance",
    "importance_name": "lightning_prune.core.channel.importance",
    "needs_gradients": "lightning_prune.core.channel.importance",
    # channel.modules
    "find_output_layers": "lightning_prune.core.channel.modules",
    "masked_modules": "lightning_prune.core.channel.modules",
    "preserved_modes": "lightning_prune.core.channel.modules",
    "unreached_modules": "lightning_prune.core.channel.modules",
    # channel.optim
    "check_optimizer": "lightning_prune.core.channel.optim",
    "optimizer_layers": "lightning_prune.core.channel.optim",
    "params_missing_from": "lightning_prune.core.channel.optim",
    "rebind_optimizer": "lightning_prune.core.channel.optim",
    "rebind_optimizers": "lightning_prune.core.channel.optim",
    "slice_state_value": "lightning_prune.core.channel.optim",
    "state_problems": "lightning_prune.core.channel.optim",
    # channel.planning
    "collect_plan": "lightning_prune.core.channel.planning",
    "describe": "lightning_prune.core.channel.planning",
    "head_ratios": "lightning_prune.core.channel.planning",
    "min_keep": "lightning_prune.core.channel.planning",
    "ratio_dict": "lightning_prune.core.channel.planning",
    "trim": "lightning_prune.core.channel.planning",
    # channel.pruner
    "ChannelPruner": "lightning_prune.core.channel.pruner",
    "Plan": "lightning_prune.core.channel.pruner",
    "check_pruning_ratio_dict": "lightning_prune.core.channel.pruner",
    "example_inputs_like": "lightning_prune.core.channel.pruner",
    # channel.regularize
    "GroupRegularizer": "lightning_prune.core.channel.regularize",
    # channel.rehearsal
    "rehearse": "lightning_prune.core.channel.rehearsal",
    # channel.reshape
    "ArchitectureMismatchError": "lightning_prune.core.channel.reshape",
    "HEAD_ATTRS": "lightning_prune.core.channel.reshape",
    "WIDTH_ATTRS": "lightning_prune.core.channel.reshape",
    "architecture": "lightning_prune.core.channel.reshape",
    "architecture_in": "lightning_prune.core.channel.reshape",
    "load_channel_pruned": "lightning_prune.core.channel.reshape",
    "remember_shapes": "lightning_prune.core.channel.reshape",
    "reshape_to_state_dict": "lightning_prune.core.channel.reshape",
    "sync_attention": "lightning_prune.core.channel.reshape",
    "sync_width_attributes": "lightning_prune.core.channel.reshape",
    "tensor_shapes": "lightning_prune.core.channel.reshape",
    "widest_shapes": "lightning_prune.core.channel.reshape",
    # channel.speedup
    "SpeedupSearch": "lightning_prune.core.channel.speedup",
    "check_speedup": "lightning_prune.core.channel.speedup",
    "dry_run_macs": "lightning_prune.core.channel.speedup",
    "reduction_speedup": "lightning_prune.core.channel.speedup",
    "search_ratio": "lightning_prune.core.channel.speedup",
    "speedup_reduction": "lightning_prune.core.channel.speedup",
    # channel.transaction
    "ChannelEvent": "lightning_prune.core.channel.transaction",
    "Transaction": "lightning_prune.core.channel.transaction",
    "follow_pruned": "lightning_prune.core.channel.transaction",
    "run_channel_event": "lightning_prune.core.channel.transaction",
    "snapshot_optimizers": "lightning_prune.core.channel.transaction",
    # compress
    "FORMAT": "lightning_prune.core.compress",
    "compressed_nbytes": "lightning_prune.core.compress",
    "decode_entry": "lightning_prune.core.compress",
    "encode_entry": "lightning_prune.core.compress",
    "entry_nbytes": "lightning_prune.core.compress",
    "load_compressed": "lightning_prune.core.compress",
    "load_compressed_state_dict": "lightning_prune.core.compress",
    "plain_state_dict": "lightning_prune.core.compress",
    "save_compressed": "lightning_prune.core.compress",
    # distill
    "distillation_loss": "lightning_prune.core.distill",
    "frozen_copy": "lightning_prune.core.distill",
    "kd_loss": "lightning_prune.core.distill",
    # export
    "ExportFormat": "lightning_prune.core.export",
    "ExportMismatchError": "lightning_prune.core.export",
    "FORMATS": "lightning_prune.core.export",
    "SUFFIXES": "lightning_prune.core.export",
    "deployable_copy": "lightning_prune.core.export",
    "format_for_path": "lightning_prune.core.export",
    "load_exported": "lightning_prune.core.export",
    "max_abs_difference": "lightning_prune.core.export",
    "pruned_targets": "lightning_prune.core.export",
    # measure
    "MB": "lightning_prune.core.measure",
    "MacsCache": "lightning_prune.core.measure",
    "ModelStats": "lightning_prune.core.measure",
    "architecture_key": "lightning_prune.core.measure",
    "count_macs": "lightning_prune.core.measure",
    "count_macs_nonzero": "lightning_prune.core.measure",
    "count_params": "lightning_prune.core.measure",
    "count_params_nonzero": "lightning_prune.core.measure",
    "effective_named_parameters": "lightning_prune.core.measure",
    "layer_sparsity": "lightning_prune.core.measure",
    "prunable_layers": "lightning_prune.core.measure",
    "saved_buffers": "lightning_prune.core.measure",
    "size_mb": "lightning_prune.core.measure",
    "sparsity": "lightning_prune.core.measure",
    "sparsity_all": "lightning_prune.core.measure",
    "use_counts": "lightning_prune.core.measure",
    # patterns
    "check_patterns_match": "lightning_prune.core.patterns",
    "compile_patterns": "lightning_prune.core.patterns",
    "matches_any": "lightning_prune.core.patterns",
    "name_matches": "lightning_prune.core.patterns",
    "strip_wrappers": "lightning_prune.core.patterns",
    "type_matches": "lightning_prune.core.patterns",
    # schedules
    "SCHEDULES": "lightning_prune.core.schedules",
    "Schedule": "lightning_prune.core.schedules",
    "ScheduleName": "lightning_prune.core.schedules",
    "StepSchedule": "lightning_prune.core.schedules",
    "build_schedule": "lightning_prune.core.schedules",
    "count_for": "lightning_prune.core.schedules",
    "default_end_epoch": "lightning_prune.core.schedules",
    "event_epochs": "lightning_prune.core.schedules",
    "late_end_epoch": "lightning_prune.core.schedules",
    "resolve_start_epoch": "lightning_prune.core.schedules",
    "schedule_fraction": "lightning_prune.core.schedules",
    "steps_per_epoch": "lightning_prune.core.schedules",
    "validate_milestones": "lightning_prune.core.schedules",
    # sensitivity
    "DEFAULT_RATIOS": "lightning_prune.core.sensitivity",
    "KINDS": "lightning_prune.core.sensitivity",
    "SENSITIVITY_NORMS": "lightning_prune.core.sensitivity",
    "SensitivityKind": "lightning_prune.core.sensitivity",
    "SensitivityNorm": "lightning_prune.core.sensitivity",
    "SensitivityResult": "lightning_prune.core.sensitivity",
    "accuracy": "lightning_prune.core.sensitivity",
    "channel_macs_of": "lightning_prune.core.sensitivity",
    "sensitivity_scan": "lightning_prune.core.sensitivity",
    # unstructured.masks
    "NORMS": "lightning_prune.core.unstructured.masks",
    "Norm": "lightning_prune.core.unstructured.masks",
    "SCOPES": "lightning_prune.core.unstructured.masks",
    "Target": "lightning_prune.core.unstructured.masks",
    "apply_masks": "lightning_prune.core.unstructured.masks",
    "compute_masks": "lightning_prune.core.unstructured.masks",
    "current_weights": "lightning_prune.core.unstructured.masks",
    "custom_scores": "lightning_prune.core.unstructured.masks",
    "find_prunable": "lightning_prune.core.unstructured.masks",
    "get_masks": "lightning_prune.core.unstructured.masks",
    "get_param": "lightning_prune.core.unstructured.masks",
    "make_permanent": "lightning_prune.core.unstructured.masks",
    "mask_sparsity": "lightning_prune.core.unstructured.masks",
    "refresh_weights": "lightning_prune.core.unstructured.masks",
    "score": "lightning_prune.core.unstructured.masks",
    "target_key": "lightning_prune.core.unstructured.masks",
    "zero_optimizer_state": "lightning_prune.core.unstructured.masks",
    # unstructured.nm
    "compute_nm_masks": "lightning_prune.core.unstructured.nm",
    "group_counts": "lightning_prune.core.unstructured.nm",
    "group_dim": "lightning_prune.core.unstructured.nm",
    "is_nm": "lightning_prune.core.unstructured.nm",
    "nm_eligible": "lightning_prune.core.unstructured.nm",
    "parse_pattern": "lightning_prune.core.unstructured.nm",
    "pattern_sparsity": "lightning_prune.core.unstructured.nm",
    "to_semi_structured": "lightning_prune.core.unstructured.nm",
    # unstructured.reparam
    "effective": "lightning_prune.core.unstructured.reparam",
    "effective_weight": "lightning_prune.core.unstructured.reparam",
    "is_pruned": "lightning_prune.core.unstructured.reparam",
    "pruned_names": "lightning_prune.core.unstructured.reparam",
    # unstructured.scores
    "lamp_scores": "lightning_prune.core.unstructured.scores",
    # unstructured.select
    "CHUNK": "lightning_prune.core.unstructured.select",
    "select_masks": "lightning_prune.core.unstructured.select",
    "select_with_keys": "lightning_prune.core.unstructured.select",
    # unstructured.sharded
    "Collective": "lightning_prune.core.unstructured.sharded",
    "ShardedKeys": "lightning_prune.core.unstructured.sharded",
    "draw_slice": "lightning_prune.core.unstructured.sharded",
    "nm_masks_sharded": "lightning_prune.core.unstructured.sharded",
    "select_masks_sharded": "lightning_prune.core.unstructured.sharded",
    # unstructured.structured
    "STRUCTURED_NORMS": "lightning_prune.core.unstructured.structured",
    "compute_structured_masks": "lightning_prune.core.unstructured.structured",
    "slice_norms": "lightning_prune.core.unstructured.structured",
    # unstructured.targets
    "BIAS_PARAMETERS": "lightning_prune.core.unstructured.targets",
    "DEFAULT_MODULE_TYPES": "lightning_prune.core.unstructured.targets",
    "DEFAULT_PARAMETERS": "lightning_prune.core.unstructured.targets",
    "check_parameter_patterns": "lightning_prune.core.unstructured.targets",
    "dedupe": "lightning_prune.core.unstructured.targets",
    "find_targets": "lightning_prune.core.unstructured.targets",
    "find_ties": "lightning_prune.core.unstructured.targets",
    "named_tensors": "lightning_prune.core.unstructured.targets",
    "parameter_matches": "lightning_prune.core.unstructured.targets",
    "resolve_objects": "lightning_prune.core.unstructured.targets",
    "unselected_matrices": "lightning_prune.core.unstructured.targets",
    "with_ties": "lightning_prune.core.unstructured.targets",
    # unstructured.wanda
    "InputNorms": "lightning_prune.core.unstructured.wanda",
    "input_dim": "lightning_prune.core.unstructured.wanda",
    "wanda_scores": "lightning_prune.core.unstructured.wanda",
    "wanda_weights": "lightning_prune.core.unstructured.wanda",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_module(globals(), _LAZY)


if TYPE_CHECKING:  # static tools see the eager imports
    from lightning_prune.core.bitpack import (
        BitOrder,
        pack_bits,
        pack_mask,
        unpack_bits,
        unpack_mask,
    )
    from lightning_prune.core.channel.applying import (
        ChannelPruningError,
        StepResult,
        apply_plan,
        check_forward,
    )
    from lightning_prune.core.channel.decoder import (
        DECODER_CRITERIA,
        ActivationStats,
        DecoderPruner,
        DecoderStepResult,
        DecoderWidths,
        check_decoder,
        config_widths,
        decoder_widths,
        find_decoders,
        group_scores,
        kept_channels,
        kept_groups,
        layer_widths,
        mlp_scores,
        prune_kv_groups,
        prune_mlp,
        refuse_decoders,
        set_config_widths,
        sync_attention_attrs,
        unsupported_parameters,
    )
    from lightning_prune.core.channel.decoder_event import (
        run_decoder_event,
        snapshot_configs,
        snapshot_pruner,
    )
    from lightning_prune.core.channel.decoder_hidden import (
        hidden_entries,
        hidden_scores,
        output_heads,
        prune_hidden,
        sync_hidden_attrs,
    )
    from lightning_prune.core.channel.decoder_io import (
        head_pruning_unsupported,
        pretrained_model,
        rebuilt_shape_mismatches,
        reshape_decoder_to_state_dict,
        save_pretrained,
    )
    from lightning_prune.core.channel.gradients import (
        GradientSum,
    )
    from lightning_prune.core.channel.importance import (
        IMPORTANCES,
        ImportanceName,
        ImportanceSpec,
        build_importance,
        importance_name,
        needs_gradients,
    )
    from lightning_prune.core.channel.modules import (
        find_output_layers,
        masked_modules,
        preserved_modes,
        unreached_modules,
    )
    from lightning_prune.core.channel.optim import (
        check_optimizer,
        optimizer_layers,
        params_missing_from,
        rebind_optimizer,
        rebind_optimizers,
        slice_state_value,
        state_problems,
    )
    from lightning_prune.core.channel.planning import (
        collect_plan,
        describe,
        head_ratios,
        min_keep,
        ratio_dict,
        trim,
    )
    from lightning_prune.core.channel.pruner import (
        ChannelPruner,
        Plan,
        check_pruning_ratio_dict,
        example_inputs_like,
    )
    from lightning_prune.core.channel.regularize import (
        GroupRegularizer,
    )
    from lightning_prune.core.channel.rehearsal import (
        rehearse,
    )
    from lightning_prune.core.channel.reshape import (
        HEAD_ATTRS,
        WIDTH_ATTRS,
        ArchitectureMismatchError,
        architecture,
        architecture_in,
        load_channel_pruned,
        remember_shapes,
        reshape_to_state_dict,
        sync_attention,
        sync_width_attributes,
        tensor_shapes,
        widest_shapes,
    )
    from lightning_prune.core.channel.speedup import (
        SpeedupSearch,
        check_speedup,
        dry_run_macs,
        reduction_speedup,
        search_ratio,
        speedup_reduction,
    )
    from lightning_prune.core.channel.transaction import (
        ChannelEvent,
        Transaction,
        follow_pruned,
        run_channel_event,
        snapshot_optimizers,
    )
    from lightning_prune.core.compress import (
        FORMAT,
        compressed_nbytes,
        decode_entry,
        encode_entry,
        entry_nbytes,
        load_compressed,
        load_compressed_state_dict,
        plain_state_dict,
        save_compressed,
    )
    from lightning_prune.core.distill import (
        distillation_loss,
        frozen_copy,
        kd_loss,
    )
    from lightning_prune.core.export import (
        FORMATS,
        SUFFIXES,
        ExportFormat,
        ExportMismatchError,
        deployable_copy,
        format_for_path,
        load_exported,
        max_abs_difference,
        pruned_targets,
    )
    from lightning_prune.core.measure import (
        MB,
        MacsCache,
        ModelStats,
        architecture_key,
        count_macs,
        count_macs_nonzero,
        count_params,
        count_params_nonzero,
        effective_named_parameters,
        layer_sparsity,
        prunable_layers,
        saved_buffers,
        size_mb,
        sparsity,
        sparsity_all,
        use_counts,
    )
    from lightning_prune.core.patterns import (
        check_patterns_match,
        compile_patterns,
        matches_any,
        name_matches,
        strip_wrappers,
        type_matches,
    )
    from lightning_prune.core.schedules import (
        SCHEDULES,
        Schedule,
        ScheduleName,
        StepSchedule,
        build_schedule,
        count_for,
        default_end_epoch,
        event_epochs,
        late_end_epoch,
        resolve_start_epoch,
        schedule_fraction,
        steps_per_epoch,
        validate_milestones,
    )
    from lightning_prune.core.sensitivity import (
        DEFAULT_RATIOS,
        KINDS,
        SENSITIVITY_NORMS,
        SensitivityKind,
        SensitivityNorm,
        SensitivityResult,
        accuracy,
        channel_macs_of,
        sensitivity_scan,
    )
    from lightning_prune.core.unstructured.masks import (
        NORMS,
        SCOPES,
        Norm,
        Target,
        apply_masks,
        compute_masks,
        current_weights,
        custom_scores,
        find_prunable,
        get_masks,
        get_param,
        make_permanent,
        mask_sparsity,
        refresh_weights,
        score,
        target_key,
        zero_optimizer_state,
    )
    from lightning_prune.core.unstructured.nm import (
        compute_nm_masks,
        group_counts,
        group_dim,
        is_nm,
        nm_eligible,
        parse_pattern,
        pattern_sparsity,
        to_semi_structured,
    )
    from lightning_prune.core.unstructured.reparam import (
        effective,
        effective_weight,
        is_pruned,
        pruned_names,
    )
    from lightning_prune.core.unstructured.scores import (
        lamp_scores,
    )
    from lightning_prune.core.unstructured.select import (
        CHUNK,
        select_masks,
        select_with_keys,
    )
    from lightning_prune.core.unstructured.sharded import (
        Collective,
        ShardedKeys,
        draw_slice,
        nm_masks_sharded,
        select_masks_sharded,
    )
    from lightning_prune.core.unstructured.structured import (
        STRUCTURED_NORMS,
        compute_structured_masks,
        slice_norms,
    )
    from lightning_prune.core.unstructured.targets import (
        BIAS_PARAMETERS,
        DEFAULT_MODULE_TYPES,
        DEFAULT_PARAMETERS,
        check_parameter_patterns,
        dedupe,
        find_targets,
        find_ties,
        named_tensors,
        parameter_matches,
        resolve_objects,
        unselected_matrices,
        with_ties,
    )
    from lightning_prune.core.unstructured.wanda import (
        InputNorms,
        input_dim,
        wanda_scores,
        wanda_weights,
    )
