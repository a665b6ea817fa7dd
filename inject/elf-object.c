/*
 * elf-object.c — reading the ELF objects a target has mapped (for
 * rekeyguard-inject and rekeyguard-status; elf-object.h).
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
 * the file is bounded by the file's size; ELF32 objects are widened into
 * the Elf64 types as they are read, so every caller sees one layout.
 */
#define _GNU_SOURCE
#include "elf-object.h"

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
static bool vaddr_to_offset(const struct elf_object *elf, uint64_t vaddr, uint64_t *off)
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
static size_t gnu_hash_count(const struct elf_object *elf, uint64_t hash_off)
{
	uint32_t hdr[4];
	if (!read_at(elf->fd, hash_off, hdr, sizeof hdr))
		return 0;
	uint32_t nbuckets = hdr[0], symoffset = hdr[1], bloom_size = hdr[2];
	if (nbuckets == 0 || nbuckets > (1u << 24) || bloom_size > (1u << 24))
		return 0;
	uint64_t bloom_word = elf->eh.e_ident[EI_CLASS] == ELFCLASS64 ? 8 : 4;
	uint64_t buckets_off = hash_off + sizeof hdr + (uint64_t)bloom_size * bloom_word;
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

static Elf64_Rela *read_relas(const struct elf_object *elf, uint64_t vaddr, uint64_t size,
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

/* The file's header, program headers and dynamic section, ELF32 widened.
 * Each returns false when they cannot be read. */
static bool read_ehdr(int fd, Elf64_Ehdr *eh)
{
	if (!read_at(fd, 0, eh->e_ident, EI_NIDENT) || memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0)
		return false;
	if (eh->e_ident[EI_CLASS] == ELFCLASS64)
		return read_at(fd, 0, eh, sizeof *eh);
	Elf32_Ehdr e32;
	if (eh->e_ident[EI_CLASS] != ELFCLASS32 || !read_at(fd, 0, &e32, sizeof e32))
		return false;
	eh->e_type = e32.e_type;
	eh->e_machine = e32.e_machine;
	eh->e_version = e32.e_version;
	eh->e_entry = e32.e_entry;
	eh->e_phoff = e32.e_phoff;
	eh->e_shoff = e32.e_shoff;
	eh->e_flags = e32.e_flags;
	eh->e_ehsize = e32.e_ehsize;
	eh->e_phentsize = e32.e_phentsize == sizeof(Elf32_Phdr) ? sizeof(Elf64_Phdr) : 0;
	eh->e_phnum = e32.e_phnum;
	eh->e_shentsize = e32.e_shentsize;
	eh->e_shnum = e32.e_shnum;
	eh->e_shstrndx = e32.e_shstrndx;
	return true;
}

static bool is_elf64(const struct elf_object *elf)
{
	return elf->eh.e_ident[EI_CLASS] == ELFCLASS64;
}

static Elf64_Phdr *read_phdrs(const struct elf_object *elf)
{
	size_t n = elf->eh.e_phnum;
	if (is_elf64(elf))
		return read_alloc(elf->fd, elf->eh.e_phoff, n * sizeof(Elf64_Phdr));
	Elf32_Phdr *p32 = read_alloc(elf->fd, elf->eh.e_phoff, n * sizeof(Elf32_Phdr));
	Elf64_Phdr *ph = p32 != NULL ? calloc(n, sizeof *ph) : NULL;
	for (size_t i = 0; ph != NULL && i < n; i++) {
		ph[i].p_type = p32[i].p_type;
		ph[i].p_flags = p32[i].p_flags;
		ph[i].p_offset = p32[i].p_offset;
		ph[i].p_vaddr = p32[i].p_vaddr;
		ph[i].p_paddr = p32[i].p_paddr;
		ph[i].p_filesz = p32[i].p_filesz;
		ph[i].p_memsz = p32[i].p_memsz;
		ph[i].p_align = p32[i].p_align;
	}
	free(p32);
	return ph;
}

static Elf64_Dyn *read_dynamic(const struct elf_object *elf, const Elf64_Phdr *dynamic,
			       size_t *count)
{
	*count = 0;
	if (is_elf64(elf)) {
		Elf64_Dyn *dyn = read_alloc(elf->fd, dynamic->p_offset, dynamic->p_filesz);
		if (dyn != NULL)
			*count = dynamic->p_filesz / sizeof *dyn;
		return dyn;
	}
	size_t n = dynamic->p_filesz / sizeof(Elf32_Dyn);
	Elf32_Dyn *d32 = read_alloc(elf->fd, dynamic->p_offset, n * sizeof(Elf32_Dyn));
	Elf64_Dyn *dyn = d32 != NULL ? calloc(n, sizeof *dyn) : NULL;
	for (size_t i = 0; dyn != NULL && i < n; i++) {
		dyn[i].d_tag = d32[i].d_tag;
		dyn[i].d_un.d_val = d32[i].d_un.d_val;
	}
	free(d32);
	if (dyn != NULL)
		*count = n;
	return dyn;
}

static Elf64_Sym *read_symbols(const struct elf_object *elf, uint64_t off, size_t n)
{
	if (is_elf64(elf))
		return read_alloc(elf->fd, off, n * sizeof(Elf64_Sym));
	Elf32_Sym *s32 = read_alloc(elf->fd, off, n * sizeof(Elf32_Sym));
	Elf64_Sym *syms = s32 != NULL ? calloc(n, sizeof *syms) : NULL;
	for (size_t i = 0; syms != NULL && i < n; i++) {
		syms[i].st_name = s32[i].st_name;
		syms[i].st_info = s32[i].st_info;
		syms[i].st_other = s32[i].st_other;
		syms[i].st_shndx = s32[i].st_shndx;
		syms[i].st_value = s32[i].st_value;
		syms[i].st_size = s32[i].st_size;
	}
	free(s32);
	return syms;
}

#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define ELF_NATIVE_DATA ELFDATA2MSB
#else
#define ELF_NATIVE_DATA ELFDATA2LSB
#endif

int elf_object_open(struct elf_object *elf, int fd, unsigned flags, char *err, size_t errlen)
{
	memset(elf, 0, sizeof *elf);
	elf->fd = fd;
	struct stat st;
	if (fstat(fd, &st) != 0 || !read_ehdr(fd, &elf->eh))
		return elf_err(err, errlen, "cannot read the ELF header");
	const Elf64_Ehdr *eh = &elf->eh;
	bool x86_64 = is_elf64(elf) && eh->e_machine == EM_X86_64;
	if ((flags & (ELF_OBJECT_X86_64 | ELF_OBJECT_RELOCS)) && !x86_64)
		return elf_err(err, errlen, "not an x86-64 ELF64 executable or shared object");
	if (eh->e_ident[EI_DATA] != ELF_NATIVE_DATA ||
	    (eh->e_type != ET_DYN && eh->e_type != ET_EXEC) ||
	    eh->e_phentsize != sizeof(Elf64_Phdr) || eh->e_phnum == 0)
		return elf_err(err, errlen, "not an ELF executable or shared object of this byte order");
	elf->ph = read_phdrs(elf);
	if (elf->ph == NULL)
		return elf_err(err, errlen, "cannot read the program headers");

	/* The first mapping starts at the page holding the lowest PT_LOAD. */
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
	if (page == 0 || (page & (page - 1)) != 0)
		page = 4096;
	const Elf64_Phdr *dynamic = NULL;
	bool have_load = false;
	for (int i = 0; i < eh->e_phnum; i++) {
		const Elf64_Phdr *ph = &elf->ph[i];
		if (ph->p_type == PT_LOAD && (!have_load || ph->p_vaddr < elf->base_vaddr)) {
			elf->base_vaddr = ph->p_vaddr & ~(page - 1);
			have_load = true;
		}
		if (ph->p_type == PT_DYNAMIC)
			dynamic = ph;
	}
	if (dynamic == NULL || dynamic->p_filesz == 0 ||
	    dynamic->p_offset + dynamic->p_filesz > (uint64_t)st.st_size)
		return elf_err(err, errlen, "no dynamic section");
	size_t ndyn;
	Elf64_Dyn *dyn = read_dynamic(elf, dynamic, &ndyn);
	if (dyn == NULL)
		return elf_err(err, errlen, "cannot read the dynamic section");

	uint64_t symtab = 0, strtab = 0, strsz = 0, hash = 0, gnu_hash = 0, versym = 0;
	uint64_t rela = 0, relasz = 0, relacount = 0, jmprel = 0, pltrelsz = 0;
	for (size_t i = 0; i < ndyn && dyn[i].d_tag != DT_NULL; i++) {
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
	size_t sym_size = is_elf64(elf) ? sizeof(Elf64_Sym) : sizeof(Elf32_Sym);
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
	if (elf->nsyms == 0 || symtab_off + elf->nsyms * sym_size > (uint64_t)st.st_size)
		return elf_err(err, errlen, "cannot size the dynamic symbol table");
	elf->syms = read_symbols(elf, symtab_off, elf->nsyms);
	elf->strtab = read_alloc(fd, strtab_off, strsz);
	elf->strsz = strsz;
	if (elf->syms == NULL || elf->strtab == NULL)
		return elf_err(err, errlen, "cannot read the dynamic symbol table");
	elf->strtab[strsz - 1] = '\0';
	if (versym != 0 && vaddr_to_offset(elf, versym, &off))
		elf->versym = read_alloc(fd, off, elf->nsyms * sizeof(uint16_t));

	if (flags & ELF_OBJECT_RELOCS) {
		elf->rela = read_relas(elf, rela, relasz, relacount, &elf->nrela);
		elf->jmprel = read_relas(elf, jmprel, pltrelsz, 0, &elf->njmprel);
	}
	return 0;
}

void elf_object_close(struct elf_object *elf)
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

bool elf_object_lookup(const struct elf_object *elf, const char *name, uint64_t *value)
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

bool elf_object_find_code(const struct elf_object *elf, const void *bytes, size_t len, uint64_t *vaddr)
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

uint64_t elf_object_bias(const struct elf_object *elf, uint64_t map_start)
{
	return map_start - elf->base_vaddr;
}
