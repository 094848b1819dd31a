// SPDX-License-Identifier: Apache-2.0
/* See elfsec.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dl_iterate_phdr */
#endif
#include "elfsec.h"

#include <elf.h>
#include <link.h>
#include <stdint.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Section headers larger than this are not a shared library we load. */
#define MAX_SECTIONS 4096

static int read_at(int fd, void *buf, size_t n, off_t off)
{
	return pread(fd, buf, n, off) == (ssize_t)n ? 0 : -1;
}

/* sh_addr of section `name` in the ELF file `fd` (0: none); *type = e_type. */
static Elf64_Addr find_section(int fd, const char *name, size_t *size, int *type)
{
	Elf64_Ehdr eh;
	if (read_at(fd, &eh, sizeof eh, 0) < 0 || memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 ||
	    eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_shentsize != sizeof(Elf64_Shdr) ||
	    eh.e_shnum == 0 || eh.e_shnum > MAX_SECTIONS || eh.e_shstrndx >= eh.e_shnum)
		return 0;
	*type = eh.e_type;
	Elf64_Shdr *sh = calloc(eh.e_shnum, sizeof *sh);
	if (!sh)
		return 0;
	Elf64_Addr addr = 0;
	char *names = NULL;
	if (read_at(fd, sh, eh.e_shnum * sizeof *sh, (off_t)eh.e_shoff) < 0)
		goto out;
	const Elf64_Shdr *strtab = &sh[eh.e_shstrndx];
	if (strtab->sh_size == 0 || strtab->sh_size > (1u << 20) || !(names = malloc(strtab->sh_size + 1)) ||
	    read_at(fd, names, strtab->sh_size, (off_t)strtab->sh_offset) < 0)
		goto out;
	names[strtab->sh_size] = 0;
	for (unsigned i = 0; i < eh.e_shnum; i++) {
		if (sh[i].sh_name >= strtab->sh_size || strcmp(names + sh[i].sh_name, name) != 0)
			continue;
		if ((sh[i].sh_flags & SHF_ALLOC) && sh[i].sh_addr) {
			addr = sh[i].sh_addr;
			*size = sh[i].sh_size;
		}
		break;
	}
out:
	free(names);
	free(sh);
	return addr;
}

struct lookup {
	uintptr_t inside;
	uintptr_t bias;     /* load bias: 0 for a fixed-address executable */
	const char *path;   /* "" for the main program */
	int found;
};

static int match_object(struct dl_phdr_info *info, size_t sz, void *arg)
{
	(void)sz;
	struct lookup *l = arg;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
		if (ph->p_type == PT_LOAD && l->inside >= lo && l->inside < lo + ph->p_memsz) {
			l->bias = info->dlpi_addr;
			l->path = info->dlpi_name;
			l->found = 1;
			return 1;
		}
	}
	return 0;
}

void *elf_loaded_section(const void *inside, const char *name, size_t *size)
{
	struct lookup l = { .inside = (uintptr_t)inside };
	if (!inside || !dl_iterate_phdr(match_object, &l) || !l.found)
		return NULL;
	int fd = open(l.path && l.path[0] ? l.path : "/proc/self/exe", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	int type = 0;
	size_t n = 0;
	Elf64_Addr addr = find_section(fd, name, &n, &type);
	close(fd);
	if (!addr || (type != ET_DYN && type != ET_EXEC))
		return NULL;
	*size = n;
	return (void *)(l.bias + addr);
}
