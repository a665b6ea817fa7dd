/*
 * inject-elf.c — reading the ELF objects a target has mapped.
 *
 * Owns: the dynamic symbol table (what the dynamic loader itself uses:
 * PT_DYNAMIC, DT_SYMTAB/DT_STRTAB, the symbol count from DT_HASH or
 * DT_GNU_HASH, DT_VERSYM for the default version), the GOT relocations
 * (DT_RELA without its leading R_X86_64_RELATIVE block, DT_JMPREL), and a
 * byte search in the executable segments.
 *
 * Invariants: files are read with pread from an fd the caller opened,
 * normally /proc/PID/map_files/..., so the symbols are those of the very
 * file the target mapped even after an upgrade replaced it on disk; section
 * headers are never needed (stripped objects work); every size read from
 * the file is bounded by the file's size.
 */
#define _GNU_SOURCE
#include "inject.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ELF_MAX_TABLE (256u << 20)   /* sanity bound for one table */

static int elf_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

static bool read_at(int fd, uint64_t off, void *buf, size_t len)
{
	size_t done = 0;
	while (done < len) {
		ssize_t r = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return false;
		done += (size_t)r;
	}
	return true;
}

static void *read_alloc(int fd, uint64_t off, size_t len)
{
	if (len == 0 || len > ELF_MAX_TABLE)
		return NULL;
	void *buf = malloc(len);
	if (buf != NULL && !read_at(fd, off, buf, len)) {
		free(buf);
		return NULL;
	}
	return buf;
}

/* File offset of a virtual address inside a PT_LOAD's file image. */
static bool vaddr_to_offset(const struct inj_elf *elf, uint64_t vaddr, uint64_t *off)
{
	for (int i = 0; i < elf->eh.e_phnum; i++) {
		const Elf64_Phdr *ph = &elf->ph[i];
		if (ph->p_type == PT_LOAD && vaddr >= ph->p_vaddr &&
		    vaddr < ph->p_vaddr + ph->p_filesz) {
			*off = vaddr - ph->p_vaddr + ph->p_offset;
			return true;
		}
	}
	return false;
}

/* Number of dynamic symbols from a GNU hash table: one past the highest
 * symbol index any chain reaches. */
static size_t gnu_hash_count(const struct inj_elf *elf, uint64_t hash_off)
{
	uint32_t hdr[4];
	if (!read_at(elf->fd, hash_off, hdr, sizeof hdr))
		return 0;
	uint32_t nbuckets = hdr[0], symoffset = hdr[1], bloom_size = hdr[2];
	if (nbuckets == 0 || nbuckets > (1u << 24) || bloom_size > (1u << 24))
		return 0;
	uint64_t buckets_off = hash_off + sizeof hdr + (uint64_t)bloom_size * 8;
	uint32_t *buckets = read_alloc(elf->fd, buckets_off, nbuckets * sizeof(uint32_t));
	if (buckets == NULL)
		return 0;
	uint32_t last = 0;
	for (uint32_t i = 0; i < nbuckets; i++)
		if (buckets[i] > last)
			last = buckets[i];
	free(buckets);
	if (last < symoffset)
		return symoffset;
	uint64_t chain_off = buckets_off + (uint64_t)nbuckets * 4;
	for (;; last++) {
		uint32_t h;
		if (!read_at(elf->fd, chain_off + (uint64_t)(last - symoffset) * 4, &h, sizeof h))
			return 0;
		if (h & 1)
			return (size_t)last + 1;
	}
}

static Elf64_Rela *read_relas(const struct inj_elf *elf, uint64_t vaddr, uint64_t size,
			      uint64_t skip, size_t *count)
{
	uint64_t off;
	*count = 0;
	if (vaddr == 0 || size < sizeof(Elf64_Rela) || !vaddr_to_offset(elf, vaddr, &off))
		return NULL;
	uint64_t n = size / sizeof(Elf64_Rela);
	if (skip >= n)
		return NULL;
	Elf64_Rela *v = read_alloc(elf->fd, off + skip * sizeof(Elf64_Rela),
				   (n - skip) * sizeof(Elf64_Rela));
	if (v != NULL)
		*count = (size_t)(n - skip);
	return v;
}

int inj_elf_open(struct inj_elf *elf, int fd, bool relocs, char *err, size_t errlen)
{
	memset(elf, 0, sizeof *elf);
	elf->fd = fd;
	struct stat st;
	if (fstat(fd, &st) != 0 || !read_at(fd, 0, &elf->eh, sizeof elf->eh))
		return elf_err(err, errlen, "cannot read the ELF header");
	const Elf64_Ehdr *eh = &elf->eh;
	if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh->e_ident[EI_DATA] != ELFDATA2LSB || eh->e_machine != EM_X86_64 ||
	    (eh->e_type != ET_DYN && eh->e_type != ET_EXEC) ||
	    eh->e_phentsize != sizeof(Elf64_Phdr) || eh->e_phnum == 0)
		return elf_err(err, errlen, "not an x86-64 ELF64 executable or shared object");
	elf->ph = read_alloc(fd, eh->e_phoff, (size_t)eh->e_phnum * sizeof(Elf64_Phdr));
	if (elf->ph == NULL)
		return elf_err(err, errlen, "cannot read the program headers");

	const Elf64_Phdr *dynamic = NULL;
	bool have_load = false;
	for (int i = 0; i < eh->e_phnum; i++) {
		const Elf64_Phdr *ph = &elf->ph[i];
		if (ph->p_type == PT_LOAD && (!have_load || ph->p_vaddr < elf->base_vaddr)) {
			elf->base_vaddr = ph->p_vaddr & ~(uint64_t)0xfff;
			have_load = true;
		}
		if (ph->p_type == PT_DYNAMIC)
			dynamic = ph;
	}
	if (dynamic == NULL || dynamic->p_filesz == 0 ||
	    dynamic->p_offset + dynamic->p_filesz > (uint64_t)st.st_size)
		return elf_err(err, errlen, "no dynamic section");
	Elf64_Dyn *dyn = read_alloc(fd, dynamic->p_offset, dynamic->p_filesz);
	if (dyn == NULL)
		return elf_err(err, errlen, "cannot read the dynamic section");

	uint64_t symtab = 0, strtab = 0, strsz = 0, hash = 0, gnu_hash = 0, versym = 0;
	uint64_t rela = 0, relasz = 0, relacount = 0, jmprel = 0, pltrelsz = 0;
	for (size_t i = 0; i < dynamic->p_filesz / sizeof *dyn && dyn[i].d_tag != DT_NULL; i++) {
		uint64_t v = dyn[i].d_un.d_val;
		switch (dyn[i].d_tag) {
		case DT_SYMTAB: symtab = v; break;
		case DT_STRTAB: strtab = v; break;
		case DT_STRSZ: strsz = v; break;
		case DT_HASH: hash = v; break;
		case DT_GNU_HASH: gnu_hash = v; break;
		case DT_VERSYM: versym = v; break;
		case DT_RELA: rela = v; break;
		case DT_RELASZ: relasz = v; break;
		case DT_RELACOUNT: relacount = v; break;
		case DT_JMPREL: jmprel = v; break;
		case DT_PLTRELSZ: pltrelsz = v; break;
		}
	}
	free(dyn);

	uint64_t symtab_off, strtab_off, off;
	if (!vaddr_to_offset(elf, symtab, &symtab_off) || !vaddr_to_offset(elf, strtab, &strtab_off) ||
	    strsz == 0 || strtab_off + strsz > (uint64_t)st.st_size)
		return elf_err(err, errlen, "no dynamic symbol table");
	if (hash != 0 && vaddr_to_offset(elf, hash, &off)) {
		uint32_t words[2];
		if (read_at(fd, off, words, sizeof words))
			elf->nsyms = words[1];
	} else if (gnu_hash != 0 && vaddr_to_offset(elf, gnu_hash, &off)) {
		elf->nsyms = gnu_hash_count(elf, off);
	}
	if (elf->nsyms == 0 || symtab_off + elf->nsyms * sizeof(Elf64_Sym) > (uint64_t)st.st_size)
		return elf_err(err, errlen, "cannot size the dynamic symbol table");
	elf->syms = read_alloc(fd, symtab_off, elf->nsyms * sizeof(Elf64_Sym));
	elf->strtab = read_alloc(fd, strtab_off, strsz);
	elf->strsz = strsz;
	if (elf->syms == NULL || elf->strtab == NULL)
		return elf_err(err, errlen, "cannot read the dynamic symbol table");
	elf->strtab[strsz - 1] = '\0';
	if (versym != 0 && vaddr_to_offset(elf, versym, &off))
		elf->versym = read_alloc(fd, off, elf->nsyms * sizeof(uint16_t));

	if (relocs) {
		elf->rela = read_relas(elf, rela, relasz, relacount, &elf->nrela);
		elf->jmprel = read_relas(elf, jmprel, pltrelsz, 0, &elf->njmprel);
	}
	return 0;
}

void inj_elf_close(struct inj_elf *elf)
{
	free(elf->ph);
	free(elf->syms);
	free(elf->strtab);
	free(elf->versym);
	free(elf->rela);
	free(elf->jmprel);
	memset(elf, 0, sizeof *elf);
	elf->fd = -1;
}

bool inj_elf_lookup(const struct inj_elf *elf, const char *name, uint64_t *value)
{
	bool found = false;
	for (size_t i = 1; i < elf->nsyms; i++) {
		const Elf64_Sym *s = &elf->syms[i];
		if (s->st_shndx == SHN_UNDEF || s->st_value == 0 || s->st_name >= elf->strsz ||
		    strcmp(elf->strtab + s->st_name, name) != 0)
			continue;
		bool hidden_version = elf->versym != NULL && (elf->versym[i] & 0x8000) != 0;
		if (!found || !hidden_version) {
			*value = s->st_value;
			found = true;
		}
		if (!hidden_version)
			return true;
	}
	return found;
}

bool inj_elf_find_code(const struct inj_elf *elf, const void *bytes, size_t len, uint64_t *vaddr)
{
	for (int i = 0; i < elf->eh.e_phnum; i++) {
		const Elf64_Phdr *ph = &elf->ph[i];
		if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X) || ph->p_filesz < len)
			continue;
		char *seg = read_alloc(elf->fd, ph->p_offset, ph->p_filesz);
		if (seg == NULL)
			continue;
		const char *hit = memmem(seg, ph->p_filesz, bytes, len);
		if (hit != NULL)
			*vaddr = ph->p_vaddr + (uint64_t)(hit - seg);
		free(seg);
		if (hit != NULL)
			return true;
	}
	return false;
}

uint64_t inj_elf_bias(const struct inj_elf *elf, uint64_t map_start)
{
	return map_start - elf->base_vaddr;
}
