/*
 * elf-object.h — reading an ELF object another process has mapped: its
 * dynamic symbols, its GOT relocations, a byte search in its code.
 *
 * Shared by rekeyguard-inject and rekeyguard-status (inject/elf-object.c).
 * No architecture-specific code: ELF64 and ELF32 objects of this machine's
 * byte order are read (ELF32 widened into the Elf64 types below), whatever
 * their e_machine unless the caller asks for x86-64. Only the injector's
 * GOT scan needs relocations, and reads them from x86-64 objects only.
 */
#ifndef REKEYGUARD_ELF_OBJECT_H
#define REKEYGUARD_ELF_OBJECT_H

#include <elf.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct elf_object {
	int fd;
	Elf64_Ehdr eh;                  /* an ELF32 header widened, e_ident as read */
	Elf64_Phdr *ph;                 /* eh.e_phnum entries, widened */
	uint64_t base_vaddr;            /* lowest PT_LOAD p_vaddr, page aligned */
	Elf64_Sym *syms;                /* the dynamic symbols, widened */
	size_t nsyms;
	char *strtab;
	size_t strsz;
	uint16_t *versym;               /* may be NULL */
	Elf64_Rela *rela, *jmprel;      /* without the leading RELATIVE ones */
	size_t nrela, njmprel;
};

/* elf_object_open flags. */
#define ELF_OBJECT_X86_64 1u    /* only an x86-64 ELF64 object (the injector) */
#define ELF_OBJECT_RELOCS 2u    /* read the GOT relocations too (x86-64 only) */

/* Parses an ELF object from an open fd (the fd is kept). Returns 0, or -1
 * with a reason in err. */
int elf_object_open(struct elf_object *elf, int fd, unsigned flags, char *err, size_t errlen);
void elf_object_close(struct elf_object *elf);
/* A defined dynamic symbol, the default version preferred; its st_value. */
bool elf_object_lookup(const struct elf_object *elf, const char *name, uint64_t *value);
/* The first occurrence of a byte string in an executable segment: vaddr. */
bool elf_object_find_code(const struct elf_object *elf, const void *bytes, size_t len,
			  uint64_t *vaddr);
/* Load bias of an object whose offset-0 mapping starts at map_start. */
uint64_t elf_object_bias(const struct elf_object *elf, uint64_t map_start);

#endif
