# Sourced by ./vmm and by a release bundle's bin/vmm: the JVM options of a VMM command.
#   panama_java_opts COMMAND   ->  base_opts (what the AOT cache is trained with), java_opts
panama_java_opts() {
  # Native access is granted by the jar's manifest (Enable-Native-Access: ALL-UNNAMED): the same
  # option on the command line costs JVM start time (docs/benchmarks.md, "start-up cut to one downcall").
  base_opts=(-XX:+UseSerialGC)
  java_opts=("${base_opts[@]}")
  # `vmm serve` lives long and makes garbage with every clone. With the default initial heap (1/64
  # of RAM) its young generation is large, and every page of it is touched before the first
  # collection, so its memory grows for hundreds of clones; from 8 MiB the young generation stays
  # small and the heap still grows when the live set needs it (docs/benchmarks.md, "`vmm serve`
  # memory over 1000 clone/destroy cycles", measured by bench/run-serve-memory-bench).
  # `vmm standby` and `vmm incoming` warm up before they take a VM: with the default initial heap the
  # warm-up's garbage touches the whole young generation, and those pages stay; from 8 MiB a standby
  # that adopted a VM holds less than half the memory, its restore and warm save as fast
  # (docs/benchmarks.md, "restore into a warm VMM", measured by bench/run-standby-bench).
  case "${1:-}" in
    serve|host|run|restore|clone|standby|incoming) java_opts+=(-Xms8m) ;;
  esac
  # A process that runs one VM (run, restore, clone, standby, incoming) is multiplied by the VMs of
  # a host, so it is made small (docs/benchmarks.md, "a smaller JVM per VM process"):
  # - C1 only: C2's compiler threads, code and arenas cost ~8 MiB per process, and restore, save
  #   and clone latencies were no worse without them (the VMM's hot paths are short and syscall-bound);
  # - the AOT cache mapped where it was made (JDK 25 relocates it by default, which writes pointers
  #   into ~8 MiB of its pages and so makes them private): its pages stay clean and are shared by
  #   every VMM process of the host. The cost is that the class metadata region is not
  #   randomised (ASLR) in these processes; the JVM relocates as usual if that address is taken.
  # `serve` and `host` run many VMs for a long time in one JVM: they keep C2 and the defaults.
  case "${1:-}" in
    run|restore|clone|standby|incoming)
      java_opts+=(-XX:TieredStopAtLevel=1 -XX:+UnlockDiagnosticVMOptions -XX:ArchiveRelocationMode=0) ;;
  esac
  # PANAMA_VMM_JIT=c2 keeps C2 in such a process too, at the memory C2 costs each process (above);
  # the devices do not need it (virtio-net's frames per second on this machine: 1.05-1.21x QEMU's
  # with C1 only, no better with C2; docs/benchmarks.md).
  case "${PANAMA_VMM_JIT:-c1}" in
    c1) ;;
    c2)
      local kept=() option
      for option in "${java_opts[@]}"; do [ "$option" = -XX:TieredStopAtLevel=1 ] || kept+=("$option"); done
      java_opts=("${kept[@]}") ;;
    *) echo "vmm: PANAMA_VMM_JIT=$PANAMA_VMM_JIT is not c1 (the default) or c2" >&2; exit 2 ;;
  esac
}
