# SPDX-License-Identifier: Apache-2.0
# bpf_object(<name> <src>): compiles a BPF program with clang and turns it into
# a libbpf skeleton, ${CMAKE_BINARY_DIR}/bpf/<name>.skel.h. Consumers link the
# INTERFACE target <name>_skel to get the include directory and the build
# ordering; the skeleton API is struct <name>_bpf / <name>_bpf__open() etc.
# vmlinux.h is generated from the build host's BTF at build time (never
# committed). The object uses no CO-RE relocations: bpf/asynctrace.bpf.c
# defines BPF_NO_PRESERVE_ACCESS_INDEX and reads one kernel type, struct
# pt_regs, whose layout is the architecture's user ABI, so the object is
# portable without them and libbpf never loads the running kernel's BTF.

find_program(BPF_CLANG NAMES clang-14 clang REQUIRED)
find_program(BPFTOOL NAMES bpftool PATHS /usr/sbin /sbin /usr/local/sbin REQUIRED)
set(BPF_VMLINUX_BTF "/sys/kernel/btf/vmlinux" CACHE FILEPATH
    "Kernel BTF that vmlinux.h is generated from")

if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
  set(BPF_TARGET_ARCH x86)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "aarch64|arm64")
  set(BPF_TARGET_ARCH arm64)
else()
  message(FATAL_ERROR "bpf.cmake: unsupported architecture ${CMAKE_SYSTEM_PROCESSOR}")
endif()

# libbpf's usdt.bpf.h includes <linux/errno.h>, whose <asm/errno.h> lives in
# the multiarch directory that clang -target bpf does not search by itself.
set(BPF_SYSTEM_INCLUDES "")
if(CMAKE_LIBRARY_ARCHITECTURE AND EXISTS "/usr/include/${CMAKE_LIBRARY_ARCHITECTURE}")
  list(APPEND BPF_SYSTEM_INCLUDES -idirafter "/usr/include/${CMAKE_LIBRARY_ARCHITECTURE}")
endif()

set(BPF_OUTPUT_DIR "${CMAKE_BINARY_DIR}/bpf")
# The repository's public headers, relative to this file so the function also
# works from a project that only add_subdirectory()s bpf/.
get_filename_component(BPF_REPO_INCLUDE_DIR "${CMAKE_CURRENT_LIST_DIR}/../include" ABSOLUTE)
set(BPF_VMLINUX_H "${BPF_OUTPUT_DIR}/vmlinux.h")

function(_bpf_vmlinux_target)
  # One generator target shared by every bpf_object() call.
  if(TARGET bpf_vmlinux_h)
    return()
  endif()
  if(NOT EXISTS "${BPF_VMLINUX_BTF}")
    message(FATAL_ERROR "bpf.cmake: ${BPF_VMLINUX_BTF} not found; the kernel must be built with CONFIG_DEBUG_INFO_BTF")
  endif()
  file(MAKE_DIRECTORY "${BPF_OUTPUT_DIR}")
  # Written to a temporary file first so an interrupted dump never leaves a
  # truncated header that later builds would consider up to date.
  add_custom_command(
    OUTPUT "${BPF_VMLINUX_H}"
    COMMAND sh -c "'${BPFTOOL}' btf dump file '${BPF_VMLINUX_BTF}' format c > '${BPF_VMLINUX_H}.tmp'"
    COMMAND ${CMAKE_COMMAND} -E rename "${BPF_VMLINUX_H}.tmp" "${BPF_VMLINUX_H}"
    COMMENT "Generating vmlinux.h from ${BPF_VMLINUX_BTF}"
    VERBATIM)
  add_custom_target(bpf_vmlinux_h DEPENDS "${BPF_VMLINUX_H}")
endfunction()

function(bpf_object name src)
  _bpf_vmlinux_target()
  get_filename_component(src_abs "${src}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
  get_filename_component(src_dir "${src_abs}" DIRECTORY)
  set(obj "${BPF_OUTPUT_DIR}/${name}.bpf.o")
  set(skel "${BPF_OUTPUT_DIR}/${name}.skel.h")
  # Headers next to the source (abi.h, *.bpf.h) and the shared layouts of
  # include/asynctrace/ (records.h, stack_hash.h) are dependencies: a layout
  # change must rebuild the object and the skeleton.
  file(GLOB local_headers CONFIGURE_DEPENDS "${src_dir}/*.h" "${BPF_REPO_INCLUDE_DIR}/asynctrace/*.h")

  add_custom_command(
    OUTPUT "${obj}"
    COMMAND "${BPF_CLANG}" -O2 -g -target bpf -mcpu=v3
            -D__TARGET_ARCH_${BPF_TARGET_ARCH}
            -Wall -Wno-unused-function
            -I "${BPF_OUTPUT_DIR}" -I "${src_dir}" -I "${BPF_REPO_INCLUDE_DIR}"
            ${BPF_SYSTEM_INCLUDES}
            -c "${src_abs}" -o "${obj}"
    DEPENDS "${src_abs}" ${local_headers} "${BPF_VMLINUX_H}"
    COMMENT "Compiling BPF object ${name}.bpf.o"
    VERBATIM)
  add_custom_command(
    OUTPUT "${skel}"
    # Skeleton type/functions are <name>_bpf / <name>_bpf__open(): a C++
    # namespace called <name> would clash with a struct of the same name.
    COMMAND sh -c "'${BPFTOOL}' gen skeleton '${obj}' name '${name}_bpf' > '${skel}.tmp'"
    COMMAND ${CMAKE_COMMAND} -E rename "${skel}.tmp" "${skel}"
    DEPENDS "${obj}"
    COMMENT "Generating BPF skeleton ${name}.skel.h"
    VERBATIM)
  add_custom_target(${name}_skel_gen DEPENDS "${skel}")
  add_dependencies(${name}_skel_gen bpf_vmlinux_h)

  add_library(${name}_skel INTERFACE)
  target_include_directories(${name}_skel INTERFACE "${BPF_OUTPUT_DIR}")
  # Dependencies of an INTERFACE library are followed by its consumers, so
  # anything linking <name>_skel waits for the header.
  add_dependencies(${name}_skel ${name}_skel_gen)
  set_target_properties(${name}_skel PROPERTIES BPF_OBJECT "${obj}" BPF_SKELETON "${skel}")
endfunction()
