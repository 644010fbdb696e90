"""The RL-32 assembler and disassembler (docs/machine.md, "Assembly syntax"; docs/internals.md).

    image = assemble(source, filename="<input>", defines=None)
    image = assemble_file(path, defines=None)
    text = disassemble(image)                # assembles back to the same bytes, base and entry
    text = format_instruction(instruction)   # one isa.Instruction, as the disassembler prints it

Both read ``ringlab.isa`` and add nothing to it.  Where docs/machine.md is silent, this assembler
decides:

- Numbers: decimal, ``0x`` hex and ``0b`` binary, letters in any case; a leading 0 is still
  decimal; a literal above 0xFFFFFFFF is an error.  ``/`` and ``%`` are signed and truncate
  toward zero (C); shifts by 32 or more give 0; unary ``+`` is accepted.
- Character literals and strings also take ``\\'``; they hold Latin-1 characters (one byte each).
- Identifiers are ``[A-Za-z_.][A-Za-z0-9_.]*``; ``main.loop`` names the local ``.loop`` of
  ``main`` from anywhere.  A local label before any non-local one belongs to the file start.
  Register names (any case), ``cs`` and ``crN`` cannot be symbols.
- Directives are case-insensitive like mnemonics; labels, symbols and macro names are not.
- ``dword [m]`` is accepted as an explicit 32-bit memory operand (it changes nothing).
- ``.byte`` also takes strings (``.byte "hi", 0``); ``.ascii``/``.asciz`` take comma lists of
  strings.  ``.byte`` values must fit in -128..255, ``.word`` in -32768..65535, immediates of
  ``int`` and shift counts in -128..255 (the CPU uses the count's low 5 bits).
- Symbols, labels and ``.equ`` share one namespace and none can be redefined (an ``.equ`` of a
  ``-D`` name is an error too: write ``.ifndef NAME`` / ``.equ NAME, default`` / ``.endif``).
  An ``.equ`` may name labels defined later (it is then resolved in pass 2).
- The first ``.org`` may go anywhere while nothing (no byte, no label) has been placed; after
  that ``.org`` may only move forwards.  ``base`` is the first address that receives a byte (or
  the location counter when nothing does); without ``.entry`` the entry is ``base``.
- ``.align n`` takes any positive n; ``.space`` and ``.align`` bytes count as emitted.
- Macros: parameters listed after the name with commas or blanks; ``\\name`` substitutes,
  ``\\@`` is a counter unique per expansion (GNU as style: ``.loop\\@:``), ``\\()`` separates a
  parameter from following text.  Arguments are split at top-level commas; the count must
  match.  Macro names cannot be mnemonics; macros may invoke macros, but not define them.
  ``.include`` is relative to the including file's directory and reads regular files only.
- A conditional must be closed in the file or macro body that opened it.
- Every input gets an answer: ``ringlab.asm.limits`` bounds expression, conditional, macro and
  include nesting, source file size and the text expansions add (docs/assembly.md, "Limits").
  A file that is not UTF-8 is an error at its first bad byte.
- ``Image.symbols`` holds non-local labels and ``.equ`` values, not ``-D`` defines.
"""

from ringlab.asm.assembler import assemble, assemble_file
from ringlab.asm.disassembler import disassemble, format_instruction

__all__ = ["assemble", "assemble_file", "disassemble", "format_instruction"]
